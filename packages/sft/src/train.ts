/**
 * runSft: supervised fine-tuning with LoRA on chosen dialogues (SPEC §3).
 *
 * The walk: load the base model and tokenizer → read and tokenise the data, drop the examples
 * over maxLength → split off the held-out set → attach a fresh LoRA adapter (or restore the last
 * checkpoint) → for each optimiser step, sum the gradients of `gradAccumSteps` micro-batches of
 * the loss (mean token cross-entropy of response + EOS over the whole effective batch), clip,
 * AdamW with warmup + cosine → evaluate, log, checkpoint → save the adapter (PEFT layout), merge it
 * and save the merged model (a Hugging Face folder) → a few greedy samples of the merged model.
 *
 * Reproducibility: the data order of step s is a pure function of (seed, s) (ExampleStream), the
 * only other random draws (LoRA init, dropout) come from one Rng whose state is checkpointed with
 * the adapter and the optimiser, so a run killed at any moment and resumed ends bit-identical to
 * an uninterrupted one.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  AdamW,
  LoraAdapter,
  QrlhfError,
  Rng,
  TrainingRun,
  Tracker,
  accumulateGradients,
  applyGradients,
  constantSchedule,
  cosineSchedule,
  generate,
  initBackend,
  loadModel,
  readSftExamples,
  restoreOptimizer,
  runTrainingLoop,
  saveHfFolder,
  saveLoraAdapter,
  sequenceLogProbs,
  writeDirAtomic,
  writeFileAtomic,
  dialogueFormatFor,
  type DialogueFormat,
  type LlamaModel,
  type LoraConfig,
  type Metrics,
  type StepContext,
  type Tokenizer,
  checkTrainingMemory,
  gib,
  printLine,
  upgradeMetricRow,
} from '@qrlhf/core';
import { checkSftConfig, type SftConfig } from './config.js';
import {
  ExampleStream, formatExamples, lossTokenCount, padBatch, splitHeldOut, tokenizeExamples, type SftExample, type SftText, type TokenizeStats,
} from './data.js';
import { maskedCorrect, maskedNllSum } from './loss.js';

export interface SftHooks {
  /** Every metrics row, as it is logged (training rows and evaluation rows). */
  onMetrics?: (row: Metrics) => void;
  /** After each optimiser step, with the step number (1 = the first update). */
  onStep?: (step: number) => void;
  /** No progress bar or messages on stderr. */
  quiet?: boolean;
}

export interface SftDataSummary extends TokenizeStats {
  /** Rows skipped by the reader (empty response). */
  skippedEmpty: number;
  train: number;
  heldOut: number;
  /** Held-out examples actually evaluated (maxEvalExamples). */
  evaluated: number;
}

export interface SftResult {
  outDir: string;
  adapterDir: string;
  mergedDir: string;
  /** Optimiser steps done in total (including those of a resumed run). */
  steps: number;
  /** Step resumed from (0 for a fresh run). */
  resumedFrom: number;
  /** Held-out response loss before the first update (null without a held-out set). */
  evalLossBefore: number | null;
  /** Held-out response loss and token accuracy after the last update. */
  evalLossAfter: number | null;
  tokenAccuracyAfter: number | null;
  data: SftDataSummary;
  /** Greedy generations of the merged model on held-out prompts. */
  samples: { prompt: string; response: string; reference: string }[];
}

/** Config keys that fix the training trajectory: a resumed run must agree with its checkpoint on them. */
const TRAJECTORY_KEYS = [
  'model', 'tokenizer', 'data', 'chatTemplate', 'seed', 'loraR', 'loraAlpha', 'loraDropout', 'loraTargets', 'maxLength', 'maxExamples',
  'heldOutFraction', 'microBatchSize', 'gradAccumSteps',
  // the optimiser and its schedule (issue 12 item 11: a resume with another lr went on silently)
  'lr', 'schedule', 'warmupSteps', 'minLr', 'weightDecay', 'beta1', 'beta2', 'gradClip', 'maxSteps', 'epochs',
] as const satisfies readonly (keyof SftConfig)[];

interface Prepared {
  train: SftExample[];
  heldOut: SftExample[];
  heldOutText: SftText[];
  summary: SftDataSummary;
}

async function prepareData(cfg: SftConfig & { data: string }, tok: Tokenizer, format: DialogueFormat): Promise<Prepared> {
  let skippedEmpty = 0;
  let items = await readSftExamples(cfg.data, { onSkip: () => skippedEmpty++ });
  if (cfg.maxExamples > 0) items = items.slice(0, cfg.maxExamples);
  const pairs = formatExamples(tok, items, format);
  const { examples, kept, stats } = tokenizeExamples(tok, pairs, cfg.maxLength);
  if (examples.length === 0) {
    throw new QrlhfError(
      `${cfg.data}: no example left after filtering: all ${stats.total} are longer than maxLength = ${cfg.maxLength} tokens ` +
        '(BOS + prompt + response + EOS); raise maxLength',
    );
  }
  const split = splitHeldOut(examples.map((e, i) => i), cfg.heldOutFraction, cfg.seed);
  if (split.train.length === 0) {
    throw new QrlhfError(`${cfg.data}: only ${examples.length} example(s) left after filtering, none for training (heldOutFraction ${cfg.heldOutFraction})`);
  }
  const evalIdx = cfg.maxEvalExamples > 0 ? split.heldOut.slice(0, cfg.maxEvalExamples) : split.heldOut;
  return {
    train: split.train.map((i) => examples[i]!),
    heldOut: evalIdx.map((i) => examples[i]!),
    heldOutText: evalIdx.map((i) => pairs[kept[i]!]!),
    summary: { ...stats, skippedEmpty, train: split.train.length, heldOut: split.heldOut.length, evaluated: evalIdx.length },
  };
}

/** The stream positions [start, end) of optimiser step s (0-based). */
function stepRange(s: number, effective: number, endPos: number): [number, number] {
  return [s * effective, Math.min((s + 1) * effective, endPos)];
}

function batchTensors(b: ReturnType<typeof padBatch>) {
  return {
    ids: tf.tensor2d(b.ids, [b.batch, b.length], 'int32'),
    mask: tf.tensor2d(b.attention, [b.batch, b.length]),
    loss: tf.tensor2d(b.lossMask, [b.batch, b.length]),
  };
}

/** Mean response loss and token accuracy of the model on the examples (no dropout). */
export async function evaluateSft(model: LlamaModel, examples: readonly SftExample[], batchSize: number, padId: number) {
  let nll = 0;
  let correct = 0;
  let tokens = 0;
  for (let i = 0; i < examples.length; i += batchSize) {
    const b = padBatch(examples.slice(i, i + batchSize), padId);
    const t = batchTensors(b);
    const [s, c] = tf.tidy(() => {
      const logits = model.forward(t.ids, { mask: t.mask });
      return [maskedNllSum(logits, t.ids, t.loss), maskedCorrect(logits, t.ids, t.loss)];
    });
    nll += (await s!.data())[0]!;
    correct += (await c!.data())[0]!;
    tokens += b.lossTokens;
    tf.dispose([s!, c!, t.ids, t.mask, t.loss]);
  }
  return { loss: tokens ? nll / tokens : NaN, accuracy: tokens ? correct / tokens : NaN, tokens };
}

/**
 * Refuses, before the first step, a micro-batch whose training step would not fit in the backend's
 * memory (the longest examples of the training split, microBatchSize of them), naming the largest
 * micro-batch that fits; says the estimate otherwise.
 */
function checkStepMemory(model: LlamaModel, train: readonly SftExample[], cfg: SftConfig, quiet?: boolean): void {
  const longest = Math.max(2, ...train.map((e) => e.ids.length));
  const batch = Math.min(cfg.microBatchSize, train.length);
  const m = checkTrainingMemory(model.config, batch, longest);
  const what = `a training micro-batch of ${batch} × ${longest} tokens needs about ${gib(m.need)} (estimate)`;
  if (!m.fits) {
    throw new QrlhfError(
      `sft: ${what}, more than the ${gib(m.available)} left of ${m.limit.what}; ` +
        (m.maxBatch >= 1
          ? `lower microBatchSize to ${m.maxBatch} (and raise gradAccumSteps to keep the effective batch) or maxLength`
          : `lower maxLength (${longest} tokens do not fit even alone)`),
    );
  }
  printLine(null, `sft: ${what} of the ${gib(m.available)} left of ${m.limit.what}`, quiet);
}

function loraConfigOf(cfg: SftConfig): LoraConfig {
  const all = cfg.loraTargets.includes('all-linear');
  return { r: cfg.loraR, alpha: cfg.loraAlpha, dropout: cfg.loraDropout, targetModules: all ? 'all-linear' : [...cfg.loraTargets] };
}


/**
 * Runs SFT with LoRA as configured; see the file comment. The config is checked against SFT_SCHEMA
 * (checkSftConfig); its paths are used as given (loadConfig resolved those of a file and of flags).
 * The run folder, checkpoints, metrics and the update loop are core's TrainingRun and
 * runTrainingLoop; what is SFT's is the data, the loss and the evaluation.
 */
export async function runSft(config: SftConfig, hooks: SftHooks = {}): Promise<SftResult> {
  const cfg = checkSftConfig(config);
  await initBackend(cfg.backend, { quiet: hooks.quiet ?? false });

  const out = cfg.out;
  const adapterDir = join(out, 'adapter');
  const mergedDir = join(out, 'merged');
  // One run at a time in a folder of sft runs (issue 12 items 12, 13), then the checkpoint guard.
  const run = TrainingRun.open({ out, kind: 'sft', resume: cfg.resume });
  let model: LlamaModel | null = null;
  let tracker: Tracker | null = null;
  let opt: AdamW | null = null;
  try {
    const loaded = await loadModel(cfg.model, cfg.tokenizer ? { tokenizer: cfg.tokenizer } : {});
    model = loaded.model;
    const tok = loaded.tokenizer;
    // Positions past the model's context were never trained (and their attention alone can
    // outgrow the heap, issue 12): longer examples are filtered out like any over maxLength.
    const context = model.config.maxPositionEmbeddings;
    if (cfg.maxLength > context) {
      printLine(null, `sft: maxLength ${cfg.maxLength} is over the model's context of ${context} tokens; using ${context}`, hooks.quiet);
      cfg.maxLength = context;
    }
    const format = dialogueFormatFor(cfg.chatTemplate, tok);
    const data = await prepareData(cfg, tok, format);
    checkStepMemory(model, data.train, cfg, hooks.quiet);
    const nTrain = data.train.length;
    const effective = cfg.microBatchSize * cfg.gradAccumSteps;
    const endPos = cfg.maxSteps > 0 ? cfg.maxSteps * effective : Math.max(1, Math.floor(cfg.epochs * nTrain));
    const totalSteps = cfg.maxSteps > 0 ? cfg.maxSteps : Math.ceil(endPos / effective);
    const stream = new ExampleStream(nTrain, cfg.seed);

    // The adapter, the optimiser and the Rng: fresh, or from the checkpoint.
    const lcfg = loraConfigOf(cfg);
    const state = run.restore(Object.fromEntries(TRAJECTORY_KEYS.map((k) => [k, cfg[k]])));
    let rng: Rng;
    let adapter: LoraAdapter;
    if (state) {
      rng = new Rng(cfg.seed, state.rng);
      adapter = LoraAdapter.fromTensors(model, lcfg, state.variables, join(run.checkpointDir, 'state.json'), rng);
      model.lora?.dispose();
      model.lora = adapter;
    } else {
      rng = new Rng(`${cfg.seed}:sft`);
      adapter = model.addLora(lcfg, rng);
    }
    opt = new AdamW(adapter.variables, { lr: cfg.lr, weightDecay: cfg.weightDecay, beta1: cfg.beta1, beta2: cfg.beta2 });
    restoreOptimizer(opt, state); // state.variables were taken over by fromTensors
    const trained = { variables: adapter.variables, optimizer: opt, rng };
    const resumedFrom = state?.step ?? 0;
    if (resumedFrom > totalSteps) {
      throw new QrlhfError(`${run.checkpointDir}: the checkpoint is at step ${resumedFrom}, past this config's ${totalSteps} steps`);
    }
    const warmup = Math.min(cfg.warmupSteps, totalSteps);
    const flat = constantSchedule(cfg.lr);
    const schedule =
      cfg.schedule === 'cosine'
        ? cosineSchedule({ lr: cfg.lr, warmupSteps: warmup, totalSteps, minLr: cfg.minLr })
        : (s: number) => (s < warmup ? (cfg.lr * (s + 1)) / warmup : flat(s));

    // The run folder: the resolved config, then the metrics (on resume, without the rows a killed
    // run logged after its last checkpoint).
    let evalLossBefore: number | null = null;
    tracker = await run.track({
      config: cfg,
      start: resumedFrom,
      total: totalSteps,
      label: 'sft',
      keys: ['train/loss', 'eval/loss', 'eval/token_accuracy', 'train/lr'],
      console: !hooks.quiet,
      wandbProject: cfg.wandbProject,
      kept: (row) => {
        const before = upgradeMetricRow(row)['eval/loss']; // a run begun before the namespaced names wrote eval_loss
        if (row['step'] === 0 && typeof before === 'number') evalLossBefore = before;
      },
    });
    const log = (row: Metrics) => {
      tracker!.log(row);
      hooks.onMetrics?.(row);
    };
    const d = data.summary;
    printLine(tracker, `sft: ${d.total} rows (${d.skippedEmpty} empty skipped), ${d.tooLong} over ${cfg.maxLength} tokens filtered out, ` +
        `${d.train} train / ${d.heldOut} held out; ${totalSteps} steps of ${effective} sequences ` +
        `(${cfg.microBatchSize} × ${cfg.gradAccumSteps} accumulated)` + (resumedFrom ? `; resuming at step ${resumedFrom}` : ''), hooks.quiet);

    let lastEval: { loss: number; accuracy: number } | null = null;
    const runEval = async (s: number) => {
      if (data.heldOut.length === 0) return;
      const e = await evaluateSft(model!, data.heldOut, cfg.microBatchSize, tok.padId);
      lastEval = e;
      if (s === 0) evalLossBefore = e.loss;
      // An evaluation line: the held-out metrics under eval/ (never train/loss), marked by split "eval".
      log({ step: s, split: 'eval', 'eval/loss': e.loss, 'eval/token_accuracy': e.accuracy, 'eval/tokens': e.tokens });
    };
    if (resumedFrom === 0) await runEval(0);

    // One update: the step's examples (sorted by length: less padding), the summed gradient of
    // their mean response-token loss over micro-batches, clipped, AdamW.
    const sftStep = async ({ index }: StepContext): Promise<Metrics> => {
      const t0 = performance.now();
      const [a, b] = stepRange(index, effective, endPos);
      const idx = stream.slice(a, b).map((i) => data.train[i]!);
      idx.sort((x, y) => x.ids.length - y.ids.length);
      const groupTokens = idx.reduce((n, e) => n + lossTokenCount(e), 0);
      const micro: ReturnType<typeof padBatch>[] = [];
      for (let i = 0; i < idx.length; i += cfg.microBatchSize) micro.push(padBatch(idx.slice(i, i + cfg.microBatchSize), tok.padId));
      const { grads, loss } = await accumulateGradients(micro, (pb) => {
        const bt = batchTensors(pb);
        const lp = sequenceLogProbs(model!, bt.ids, bt.mask, bt.loss, { training: true });
        return tf.div(tf.neg(tf.sum(lp)), groupTokens) as tf.Scalar;
      }, adapter.variables);
      const lr = schedule(index);
      const norm = await applyGradients(opt!, grads, lr, cfg.gradClip);
      if (!Number.isFinite(norm) || !Number.isFinite(loss)) {
        throw new QrlhfError(`sft: step ${index + 1}: the loss or the gradient is not finite (loss ${loss}, grad norm ${norm}); lower lr`);
      }
      const tokens = micro.reduce((n, pb) => n + pb.tokens, 0);
      const seconds = (performance.now() - t0) / 1000;
      return { step: index + 1, 'train/loss': loss, 'train/lr': lr, 'train/grad_norm': norm, 'train/epoch': Math.min(b, endPos) / nTrain, 'time/tokens_per_s': tokens / seconds };
    };
    const { steps: step } = await runTrainingLoop({
      start: resumedFrom,
      total: totalSteps,
      step: sftStep,
      logEvery: cfg.logEvery,
      log,
      progress: (s) => tracker!.console?.progress.update(s),
      after: async (s) => {
        if ((cfg.evalEvery > 0 && s % cfg.evalEvery === 0) || s === totalSteps) await runEval(s);
      },
      checkpoint: { every: cfg.checkpointEvery, save: (s) => run.save(s, trained, { position: s * effective, totalSteps }) },
      ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
    });
    if (lastEval === null && data.heldOut.length > 0) {
      // a resumed run that had already finished: evaluate what it ends with
      const e = await evaluateSft(model, data.heldOut, cfg.microBatchSize, tok.padId);
      lastEval = e;
    }

    // Outputs: the adapter (PEFT layout), then the merged model (a Hugging Face folder).
    await writeDirAtomic(adapterDir, (tmp) => saveLoraAdapter(tmp, adapter, cfg.model));
    model.mergeLora();
    await saveHfFolder(mergedDir, model, tok);

    const samples = await sampleMerged(model, tok, format, data.heldOutText.slice(0, cfg.samples), cfg);
    if (samples.length) writeFileAtomic(join(out, 'samples.jsonl'), samples.map((s) => JSON.stringify(s)).join('\n') + '\n');
    const le = lastEval as { loss: number; accuracy: number } | null;
    printLine(tracker, `sft: done at step ${step}; held-out response loss ${fmt(evalLossBefore)} before → ${fmt(le?.loss ?? null)} after; ` +
        `adapter ${adapterDir}, merged model ${mergedDir}`, hooks.quiet);
    return {
      outDir: out,
      adapterDir,
      mergedDir,
      steps: step,
      resumedFrom,
      evalLossBefore,
      evalLossAfter: le?.loss ?? null,
      tokenAccuracyAfter: le?.accuracy ?? null,
      data: data.summary,
      samples,
    };
  } finally {
    opt?.dispose();
    model?.dispose();
    await tracker?.close();
    run.release();
  }
}

function fmt(x: number | null): string {
  return x === null ? 'n/a' : x.toFixed(4);
}

/**
 * Greedy continuations of held-out prompts, cut at EOS or at the next "\n\nHuman:" turn (HH), or at
 * EOS or the template's end-of-turn token (a chat template).
 */
async function sampleMerged(model: LlamaModel, tok: Tokenizer, format: DialogueFormat, items: SftText[], cfg: SftConfig) {
  const out: { prompt: string; response: string; reference: string }[] = [];
  const rng = new Rng(`${cfg.seed}:samples`);
  const eot = format.endOfTurn === null ? undefined : tok.tokenToId(format.endOfTurn);
  const stopIds = eot === undefined ? undefined : [...new Set([model.config.eosTokenId, eot])];
  for (const it of items) {
    const ids = [...((it.bos ?? true) ? [tok.bosId] : []), ...tok.encode(it.prompt, { addBos: false })];
    const room = model.config.maxPositionEmbeddings - ids.length;
    const maxNew = Math.min(cfg.sampleMaxTokens, room);
    if (maxNew <= 0) continue;
    const g = await generate(model, [ids], {
      maxNewTokens: maxNew,
      temperature: 0,
      rng,
      ...(stopIds ? { eosTokenId: stopIds } : {}),
      ...(format.template ? {} : { stop: (gen: number[]) => tok.decode(gen, { skipSpecial: true }).includes('\n\nHuman:') }),
    });
    let text = tok.decode(g.tokens[0]!, { skipSpecial: true });
    const cut = format.template ? -1 : text.indexOf('\n\nHuman:');
    if (cut >= 0) text = text.slice(0, cut);
    const eotText = format.endOfTurn;
    const reference = eotText !== null && it.response.endsWith(eotText) ? it.response.slice(0, -eotText.length) : it.response;
    out.push({ prompt: it.prompt, response: text, reference });
  }
  return out;
}


/** Reads a run folder's metrics.jsonl rows (core's readRunMetrics, under the name sft has always exported). */
export { readRunMetrics as readMetrics } from '@qrlhf/core';

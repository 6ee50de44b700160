/**
 * runRloo: risk-aware RLOO (SPEC §6) on a policy with a fresh LoRA adapter.
 *
 * The walk: load the policy and tokenizer → read the prompts, drop (and count) those over
 * maxPromptLength → the reward source (a QRM folder, or the caller's) and the utility → attach the
 * RL adapter (or restore the last checkpoint) → per step: the step's prompts (a seeded order,
 * a pure function of (seed, step)), k responses each, their reward quantiles, U, KL to the
 * reference (the same weights with the adapter off), leave-one-out advantages, one REINFORCE
 * update (or ppoEpochs clipped ones) with AdamW → metrics, samples, checkpoints → the adapter in
 * PEFT layout.
 *
 * Reproducibility: the prompt order depends only on (seed, step); every other draw (LoRA init,
 * sampling, dropout) comes from one Rng checkpointed with the adapter and AdamW's moments, so a run
 * killed at any moment and resumed ends with the same adapter as an uninterrupted one.
 */
import { appendFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdamW,
  LoraAdapter,
  QrlhfError,
  Rng,
  Tracker,
  initBackend,
  loadModel,
  dialogueFormatFor,
  loadTrainingState,
  saveLoraAdapter,
  saveTrainingState,
  writeDirAtomic,
  writeFileAtomic,
  type BackendName,
  type LoraConfig,
  type Metrics,
  checkResumableConfig,
  checkpointGuard,
  openRunFolder,
  printLine,
  parseConfig,
} from '@qrlhf/core';
import { QuantileRewardModel, makeUtility, type QrmNormalise, type Utility } from '@qrlhf/qrm';
import { RLOO_SCHEMA, type RlooConfig } from './config.js';
import { RlooLearner, quantileKey, truncationGuard, type RolloutBatch } from './learner.js';
import { PromptStream, preparePrompts, readPromptTexts } from './prompts.js';
import { qrmRewardSource, type RewardSource } from './reward.js';
import { localEngine, openAiEngine, type RolloutEngine } from './engine.js';

/** One response of a step, as given to the extraMetrics hook. */
export interface RlooBatchItem {
  prompt: string;
  response: string;
  /** The reward source's K quantiles of this response. */
  quantiles: Float32Array;
}

export interface RlooHooks {
  /** The reward source to use instead of the config's QRM folder. */
  reward?: RewardSource;
  /** The utility to use instead of the config's `utility`. */
  utility?: Utility;
  /** Extra metrics of a step's responses, merged into its metrics line (e.g. the world's true quantiles as `true/q0.05`). */
  extraMetrics?: (batch: RlooBatchItem[], step: number) => Record<string, number> | Promise<Record<string, number>>;
  /** Every metrics row, as it is logged. */
  onMetrics?: (row: Metrics) => void;
  /** After each step (1 = the first update), once its checkpoint (if any) is written. */
  onStep?: (step: number) => void;
  /** No progress bar or messages on stderr. */
  quiet?: boolean;
  /** engine openai: told of every failed request that is retried (server URL, what went wrong). */
  onEngineRetry?: (url: string, error: string) => void;
}

export interface RlooResult {
  outDir: string;
  adapterDir: string;
  /** Steps done in total (including those before a resume). */
  steps: number;
  /** Step resumed from (0 for a fresh run). */
  resumedFrom: number;
  prompts: { read: number; filtered: number; used: number };
  /** The last metrics row logged by this process (null when the run was already finished). */
  last: Metrics | null;
}

/** Config keys that fix the trajectory: a resumed run must agree with its checkpoint on them. */
const TRAJECTORY_KEYS = [
  'policy', 'tokenizer', 'chatTemplate', 'qrm', 'prompts', 'maxPrompts', 'seed', 'utility', 'lambda', 'alpha', 'k', 'batchSize', 'lr',
  'weightDecay', 'gradClip', 'loraR', 'loraAlpha', 'loraDropout', 'loraTargets', 'betaKl', 'klEstimator',
  'missingEosPenalty', 'maxPromptLength', 'maxNewTokens', 'temperature', 'topP', 'topK', 'ppoEpochs', 'clipRange',
  'microBatchSize', 'generationBatchSize',
] as const satisfies readonly (keyof RlooConfig)[];

export function loraConfigOf(cfg: RlooConfig): LoraConfig {
  return {
    r: cfg.loraR,
    alpha: cfg.loraAlpha,
    dropout: cfg.loraDropout,
    targetModules: cfg.loraTargets.includes('all-linear') ? 'all-linear' : [...cfg.loraTargets],
  };
}

/** What the schema cannot say alone: the inputs a run needs, and a non-empty target list. */
function validate(cfg: RlooConfig, hooks: RlooHooks): void {
  const missing: string[] = [];
  if (!cfg.policy) missing.push('"policy" (--policy)');
  if (!cfg.prompts) missing.push('"prompts" (--prompts)');
  if (!cfg.qrm && !hooks.reward) missing.push('"qrm" (--qrm)');
  if (missing.length) throw new QrlhfError(`rloo config: ${missing.join(', ')} must be set, in the config file or as a flag`);
  truncationGuard(cfg.topP, cfg.topK, 'rloo config');
  if (cfg.loraTargets.length === 0) throw new QrlhfError('rloo config: "loraTargets" must name at least one module (or "all-linear")');
}

/** samples.jsonl rows of one step: the first `n` responses with their quantiles. */
function sampleRows(b: RolloutBatch, step: number, n: number, taus: Float32Array): string {
  const rows: string[] = [];
  for (let i = 0; i < Math.min(n, b.responses.length); i++) {
    const q = b.quantiles[i]!;
    rows.push(
      JSON.stringify({
        step,
        prompt: b.prompts[Math.floor(i / b.k)]!.text,
        response: b.texts[i],
        eos: b.eos[i],
        tokens: b.responses[i]!.length,
        quantiles: Object.fromEntries(Array.from(taus, (t, j) => [quantileKey(t), q[j]])),
        expectation: q.reduce((a, x) => a + x, 0) / q.length,
        utility: b.utilities[i],
        kl: b.kl[i],
        reward: b.rewards[i],
        advantage: b.advantages[i],
      }),
    );
  }
  return rows.map((r) => r + '\n').join('');
}

/**
 * Runs RLOO as configured; see the file comment. The config is checked against RLOO_SCHEMA (a
 * hand-built one gets the same checks as a file); its paths are used as given (loadConfig resolved
 * those of a file and of flags).
 */
export async function runRloo(config: RlooConfig, hooks: RlooHooks = {}): Promise<RlooResult> {
  const cfg = parseConfig(RLOO_SCHEMA, config, 'rloo config');
  validate(cfg, hooks);
  const utility = hooks.utility ?? (await makeUtility({ name: cfg.utility, lambda: cfg.lambda, alpha: cfg.alpha }));
  await initBackend(cfg.backend as BackendName, { quiet: hooks.quiet ?? false });

  const out = cfg.out;
  const ckptDir = join(out, 'checkpoints');
  const adapterDir = join(out, 'adapter');
  const samplesPath = join(out, 'samples.jsonl');
  // One run at a time in a folder of rloo runs (issue 12 items 12, 13), then the checkpoint guard.
  const run = openRunFolder(out, 'rloo');
  let texts: Awaited<ReturnType<typeof readPromptTexts>>;
  let loaded: Awaited<ReturnType<typeof loadModel>>;
  try {
    checkpointGuard(out, ckptDir, cfg.resume);
    texts = await readPromptTexts(cfg.prompts!, cfg.maxPrompts);
    loaded = await loadModel(cfg.policy!, cfg.tokenizer ? { tokenizer: cfg.tokenizer } : {});
  } catch (e) {
    run.release();
    throw e;
  }
  const model = loaded.model;
  const tok = loaded.tokenizer;
  let qrm: QuantileRewardModel | null = null;
  let tracker: Tracker | null = null;
  let opt: AdamW | null = null;
  let engine: RolloutEngine | null = null;
  try {
    const format = dialogueFormatFor(cfg.chatTemplate, tok);
    const pset = preparePrompts(texts, tok, {
      maxPromptLength: cfg.maxPromptLength,
      maxNewTokens: cfg.maxNewTokens,
      contextLength: model.config.maxPositionEmbeddings,
    }, format);
    if (cfg.maxNewTokens + 1 > model.config.maxPositionEmbeddings) {
      throw new QrlhfError(`rloo config: "maxNewTokens" ${cfg.maxNewTokens} leaves no room for a prompt in the policy's ${model.config.maxPositionEmbeddings}-token context`);
    }
    const stream = new PromptStream(pset.prompts.length, cfg.seed);
    let reward: RewardSource;
    if (hooks.reward) reward = hooks.reward;
    else {
      qrm = await QuantileRewardModel.load(cfg.qrm!);
      if (cfg.qrmNormalise !== null) qrm.normalise = cfg.qrmNormalise as QrmNormalise;
      reward = qrmRewardSource(qrm, { batchSize: cfg.rewardBatchSize });
    }

    // The adapter, the optimiser and the Rng: fresh, or from the checkpoint.
    const lcfg = loraConfigOf(cfg);
    const state = cfg.resume ? loadTrainingState(ckptDir) : null;
    let rng: Rng;
    let step = 0;
    let adapter: LoraAdapter;
    if (model.lora) throw new QrlhfError(`${cfg.policy}: the policy already carries a LoRA adapter; merge it first (the SFT run's merged/ folder)`);
    if (state) {
      checkResumableConfig(state.extra['config'], cfg, TRAJECTORY_KEYS, join(ckptDir, 'state.json'));
      rng = new Rng(cfg.seed, state.rng);
      adapter = LoraAdapter.fromTensors(model, lcfg, state.variables, join(ckptDir, 'state.json'), rng);
      model.lora = adapter;
      step = state.step;
    } else {
      rng = new Rng(`${cfg.seed}:rloo`);
      adapter = model.addLora(lcfg, rng);
    }
    opt = new AdamW(adapter.variables, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    if (state) {
      opt.setState(state.optimizer);
      for (const t of Object.values(state.optimizer.tensors)) t.dispose();
    } else {
      rmSync(ckptDir, { recursive: true, force: true });
    }
    const resumedFrom = step;
    if (resumedFrom > cfg.steps) throw new QrlhfError(`${ckptDir}: the checkpoint is at step ${resumedFrom}, past this config's ${cfg.steps} steps`);

    writeFileAtomic(join(out, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    // samples.jsonl: on resume keep the rows up to the checkpoint, as metrics.jsonl does
    if (resumedFrom > 0 && existsSync(samplesPath)) {
      const kept = readFileSync(samplesPath, 'utf8')
        .split('\n')
        .filter((l) => {
          if (!l.trim()) return false;
          try {
            const s = (JSON.parse(l) as { step?: unknown }).step;
            return typeof s === 'number' && s <= resumedFrom;
          } catch {
            return false;
          }
        });
      writeFileAtomic(samplesPath, kept.map((l) => l + '\n').join(''));
    } else {
      rmSync(samplesPath, { force: true });
    }
    const taus = reward.taus;
    tracker = await Tracker.create({
      dir: out,
      console: !hooks.quiet,
      label: `rloo ${cfg.utility.length > 24 ? 'custom' : cfg.utility}`,
      total: cfg.steps,
      start: resumedFrom,
      keys: ['utility', 'expectation', quantileKey(taus[0] ?? 0.05), 'kl'],
      resume: resumedFrom > 0,
      keep: (row) => typeof row['step'] === 'number' && row['step'] <= resumedFrom,
      wandb: cfg.wandbProject ? { project: cfg.wandbProject, config: { ...cfg } } : false,
    });
    const log = (row: Metrics) => {
      tracker!.log(row);
      hooks.onMetrics?.(row);
    };
    printLine(tracker, `rloo: ${pset.read} prompts read, ${pset.filtered} over ${pset.limit} tokens (${pset.limitSource}) filtered out, ${pset.prompts.length} used; ` +
        `${cfg.steps} steps of ${cfg.batchSize} prompts x ${cfg.k} responses; utility ${cfg.utility}` +
        (resumedFrom ? `; resuming at step ${resumedFrom}` : ''), hooks.quiet);

    const ecfg = cfg.engine;
    engine =
      ecfg.kind === 'openai'
        ? openAiEngine({
            engine: ecfg,
            out,
            saveAdapter: (dir) => saveLoraAdapter(dir, adapter, cfg.policy!),
            onRetry: (url, error) => {
              hooks.onEngineRetry?.(url, error);
              printLine(tracker!, `rloo: engine ${url} failed (${error}); its request goes to another server`, hooks.quiet);
            },
          })
        : localEngine(model, cfg.generationBatchSize);
    await engine.updatePolicy(step);
    // A reply in a chat template ends with the template's end-of-turn token (Llama 3: <|eot_id|>,
    // whose id need not be the tokenizer's EOS): rollouts stop there and it counts as the EOS.
    const eot = format.endOfTurn === null ? undefined : tok.tokenToId(format.endOfTurn);
    const decoder = eot === undefined ? tok : { eosId: eot, decode: (ids: number[], o?: { skipSpecial?: boolean }) => tok.decode(ids, o) };
    const learner = new RlooLearner({ model, tokenizer: decoder, reward, utility, settings: cfg, rng, optimizer: opt, engine });
    const saveCheckpoint = async (s: number) =>
      await saveTrainingState(ckptDir, {
        step: s,
        variables: adapter.variables,
        optimizer: opt!.getState(),
        rng: rng.state(),
        extra: { config: Object.fromEntries(TRAJECTORY_KEYS.map((k) => [k, cfg[k]])) },
      });
    let last: Metrics | null = null;
    let lastCkpt = resumedFrom;
    while (step < cfg.steps) {
      const t0 = performance.now();
      const idx = stream.slice(step * cfg.batchSize, (step + 1) * cfg.batchSize);
      let stepped: Awaited<ReturnType<RlooLearner['step']>>;
      try {
        stepped = await learner.step(idx.map((i) => pset.prompts[i]!), cfg.lr);
      } catch (e) {
        if (e instanceof QrlhfError && e.message.startsWith('engine')) {
          throw new QrlhfError(`${e.message}. The last checkpoint (step ${lastCkpt}, ${ckptDir}) is intact: start the servers and rerun with --resume`);
        }
        throw e;
      }
      const { batch, metrics } = stepped;
      step++;
      await engine.updatePolicy(step);
      let extra: Record<string, number> = {};
      if (hooks.extraMetrics) {
        const items = batch.texts.map((response, i) => ({ prompt: batch.prompts[Math.floor(i / batch.k)]!.text, response, quantiles: batch.quantiles[i]! }));
        extra = await hooks.extraMetrics(items, step);
      }
      const row: Metrics = { step, ...metrics, lr: cfg.lr, step_time_s: (performance.now() - t0) / 1000, filtered_prompts: pset.filtered, ...extra };
      if (step % cfg.logEvery === 0 || step === cfg.steps || step === 1) {
        log(row);
        last = row;
      } else {
        tracker.console?.progress.update(step);
      }
      if (cfg.sampleEvery > 0 && (step % cfg.sampleEvery === 0 || step === 1)) appendFileSync(samplesPath, sampleRows(batch, step, cfg.samplesPerLog, taus));
      if ((cfg.checkpointEvery > 0 && step % cfg.checkpointEvery === 0) || step === cfg.steps) {
        await saveCheckpoint(step);
        lastCkpt = step;
      }
      hooks.onStep?.(step);
    }
    if (lastCkpt !== step) await saveCheckpoint(step);
    await writeDirAtomic(adapterDir, (tmp) => saveLoraAdapter(tmp, adapter, cfg.policy!));
    printLine(tracker, `rloo: done at step ${step}; adapter ${adapterDir}`, hooks.quiet);
    return {
      outDir: out,
      adapterDir,
      steps: step,
      resumedFrom,
      prompts: { read: pset.read, filtered: pset.filtered, used: pset.prompts.length },
      last,
    };
  } finally {
    await engine?.close();
    opt?.dispose();
    model.dispose();
    qrm?.dispose();
    await tracker?.close();
    run.release();
  }
}

/** Reads a run folder's metrics.jsonl rows (core's readRunMetrics, under the name rloo has always exported). */
export { readRunMetrics as readRlooMetrics } from '@qrlhf/core';

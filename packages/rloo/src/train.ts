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
  TrainingRun,
  Tracker,
  initBackend,
  loadModel,
  dialogueFormatFor,
  restoreOptimizer,
  runTrainingLoop,
  saveLoraAdapter,
  writeDirAtomic,
  writeFileAtomic,
  type BackendName,
  type LlamaModel,
  type LoraConfig,
  type Metrics,
  type StepContext,
  printLine,
  quantileMetric,
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
  /** Extra metrics of a step's responses, merged into its metrics line (e.g. the world's exact quantiles as `truth/q0.05`). */
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
  const adapterDir = join(out, 'adapter');
  const samplesPath = join(out, 'samples.jsonl');
  // One run at a time in a folder of rloo runs (issue 12 items 12, 13), then the checkpoint guard.
  const run = TrainingRun.open({ out, kind: 'rloo', resume: cfg.resume });
  let model: LlamaModel | null = null;
  let qrm: QuantileRewardModel | null = null;
  let tracker: Tracker | null = null;
  let opt: AdamW | null = null;
  let engine: RolloutEngine | null = null;
  try {
    const texts = await readPromptTexts(cfg.prompts!, cfg.maxPrompts);
    const loaded = await loadModel(cfg.policy!, cfg.tokenizer ? { tokenizer: cfg.tokenizer } : {});
    model = loaded.model;
    const tok = loaded.tokenizer;
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
    if (model.lora) throw new QrlhfError(`${cfg.policy}: the policy already carries a LoRA adapter; merge it first (the SFT run's merged/ folder)`);
    const state = run.restore(Object.fromEntries(TRAJECTORY_KEYS.map((k) => [k, cfg[k]])));
    let rng: Rng;
    let adapter: LoraAdapter;
    if (state) {
      rng = new Rng(cfg.seed, state.rng);
      adapter = LoraAdapter.fromTensors(model, lcfg, state.variables, join(run.checkpointDir, 'state.json'), rng);
      model.lora = adapter;
    } else {
      rng = new Rng(`${cfg.seed}:rloo`);
      adapter = model.addLora(lcfg, rng);
    }
    opt = new AdamW(adapter.variables, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    restoreOptimizer(opt, state);
    const trained = { variables: adapter.variables, optimizer: opt, rng };
    const resumedFrom = state?.step ?? 0;
    if (resumedFrom > cfg.steps) throw new QrlhfError(`${run.checkpointDir}: the checkpoint is at step ${resumedFrom}, past this config's ${cfg.steps} steps`);

    const taus = reward.taus;
    tracker = await run.track({
      config: cfg,
      start: resumedFrom,
      total: cfg.steps,
      label: `rloo ${cfg.utility.length > 24 ? 'custom' : cfg.utility}`,
      keys: ['objective/utility', 'reward/expectation', quantileMetric('reward', taus[0] ?? 0.05), 'objective/kl'],
      console: !hooks.quiet,
      wandbProject: cfg.wandbProject,
    });
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
    await engine.updatePolicy(resumedFrom);
    // A reply in a chat template ends with the template's end-of-turn token (Llama 3: <|eot_id|>,
    // whose id need not be the tokenizer's EOS): rollouts stop there and it counts as the EOS.
    const eot = format.endOfTurn === null ? undefined : tok.tokenToId(format.endOfTurn);
    const decoder = eot === undefined ? tok : { eosId: eot, decode: (ids: number[], o?: { skipSpecial?: boolean }) => tok.decode(ids, o) };
    const learner = new RlooLearner({ model, tokenizer: decoder, reward, utility, settings: cfg, rng, optimizer: opt, engine });

    // One RLOO step (the learner's), then what the run adds to its row.
    let batch: RolloutBatch | null = null;
    const rlooStep = async ({ index, lastCheckpoint }: StepContext): Promise<Metrics> => {
      const t0 = performance.now();
      const idx = stream.slice(index * cfg.batchSize, (index + 1) * cfg.batchSize);
      let stepped: Awaited<ReturnType<RlooLearner['step']>>;
      try {
        stepped = await learner.step(idx.map((i) => pset.prompts[i]!), cfg.lr);
      } catch (e) {
        if (e instanceof QrlhfError && e.message.startsWith('engine')) {
          throw new QrlhfError(`${e.message}. The last checkpoint (step ${lastCheckpoint}, ${run.checkpointDir}) is intact: start the servers and rerun with --resume`);
        }
        throw e;
      }
      batch = stepped.batch;
      const b = stepped.batch;
      const step = index + 1;
      await engine!.updatePolicy(step);
      let extra: Record<string, number> = {};
      if (hooks.extraMetrics) {
        const items = b.texts.map((response, i) => ({ prompt: b.prompts[Math.floor(i / b.k)]!.text, response, quantiles: b.quantiles[i]! }));
        extra = await hooks.extraMetrics(items, step);
      }
      return { step, ...stepped.metrics, 'train/lr': cfg.lr, 'time/step_s': (performance.now() - t0) / 1000, 'data/filtered_prompts': pset.filtered, ...extra };
    };
    const { steps: step, last } = await runTrainingLoop({
      start: resumedFrom,
      total: cfg.steps,
      step: rlooStep,
      logEvery: cfg.logEvery,
      log,
      progress: (s) => tracker!.console?.progress.update(s),
      after: (s) => {
        if (cfg.sampleEvery > 0 && (s % cfg.sampleEvery === 0 || s === 1)) appendFileSync(samplesPath, sampleRows(batch!, s, cfg.samplesPerLog, taus));
      },
      checkpoint: { every: cfg.checkpointEvery, save: (s) => run.save(s, trained) },
      ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
    });
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
    model?.dispose();
    qrm?.dispose();
    await tracker?.close();
    run.release();
  }
}

/** Reads a run folder's metrics.jsonl rows (core's readRunMetrics, under the name rloo has always exported). */
export { readRunMetrics as readRlooMetrics } from '@qrlhf/core';

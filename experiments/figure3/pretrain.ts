/**
 * The tiny base model of the Figure 3 world: a Llama trained from random weights, every parameter,
 * with the next-token loss on whole dialogues of the world's pretraining corpus. The paper starts
 * from a pretrained Llama; here nothing can be downloaded, so the base model is made in a minute or
 * two, then goes through the same SFT / QRM / RLOO code as a real checkpoint would. The update
 * loop, gradient and clipped AdamW step are core's training scaffold (train/loop.ts), as in SFT and RLOO.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  AdamW,
  LlamaModel,
  QrlhfError,
  Rng,
  Tokenizer,
  TrainingRun,
  Tracker,
  accumulateGradients,
  applyGradients,
  cosineSchedule,
  readJsonlAll,
  restoreOptimizer,
  runTrainingLoop,
  saveHfFolder,
  sequenceLogProbs,
  defineConfig,
  seedField,
  type ConfigOf,
  type LlamaConfig,
  type Metrics,
  type StepContext,
} from '@qrlhf/core';

/** The pretraining stage: the base model's shape and its training (an experiment's `pretrain` block is a partial of this). */
export const PRETRAIN_SCHEMA = defineConfig({
  hiddenSize: { type: 'int', default: 96, min: 8, doc: 'model width' },
  intermediateSize: { type: 'int', default: 256, min: 8, doc: 'SwiGLU hidden size' },
  numLayers: { type: 'int', default: 3, min: 1, doc: 'layers' },
  numHeads: { type: 'int', default: 4, min: 1, doc: 'attention heads' },
  numKvHeads: { type: 'int', default: 2, min: 1, doc: 'key/value heads (grouped-query attention)' },
  rmsNormEps: { type: 'number', default: 1e-5, min: 0, minExclusive: true, doc: 'RMSNorm epsilon' },
  ropeTheta: { type: 'number', default: 10000, min: 0, minExclusive: true, doc: 'rotary base' },
  tieWordEmbeddings: { type: 'boolean', default: true, doc: 'the LM head is the embedding matrix' },
  maxPositionEmbeddings: { type: 'int', default: 256, min: 2, doc: 'context length (every dialogue must fit)' },
  steps: { type: 'int', default: 300, min: 1, doc: 'training steps (every parameter)' },
  batchSize: { type: 'int', default: 32, min: 1, doc: 'dialogues per step' },
  lr: { type: 'number', default: 3e-3, min: 0, minExclusive: true, doc: 'peak learning rate of the cosine schedule' },
  minLr: { type: 'number', default: null, nullable: true, min: 0, doc: 'floor of the cosine decay (null = lr / 10)' },
  warmupSteps: { type: 'int', default: 30, min: 0, doc: 'linear warm-up steps' },
  weightDecay: { type: 'number', default: 0.01, min: 0, doc: "AdamW's decoupled weight decay" },
  gradClip: { type: 'number', default: 1, min: 0, minExclusive: true, doc: 'clip the global gradient norm to this' },
  seed: seedField('seed of the initial weights and of the batch order'),
  checkpointEvery: { type: 'int', default: 100, min: 0, doc: 'checkpoint (every weight, AdamW, the data order) every N steps and at the end; a killed run continues from it' },
});
export type PretrainConfig = ConfigOf<typeof PRETRAIN_SCHEMA>;

/** The files pretraining reads and writes. */
export interface PretrainFiles {
  /** jsonl of {text}: the pretraining corpus */
  corpus: string;
  tokenizer: string;
  /** Hugging Face folder to write */
  out: string;
  /**
   * The run folder (kind "pretrain"): config.json, metrics.jsonl, checkpoints/. A run killed after
   * a checkpoint continues from it (with the same settings and files) and ends bit-identical.
   */
  run: string;
}

export interface PretrainHooks {
  /** After each update (1 = the first), once its checkpoint (if any) is written. */
  onStep?: (step: number) => void;
  /** No progress bar. */
  quiet?: boolean;
}

/** What a pretraining checkpoint keeps besides weights, AdamW and the Rng: the data order left, and the running numbers. */
interface PretrainExtra {
  order: number[];
  smoothed: number;
  tokens: number;
}

function pretrainExtra(x: Record<string, unknown>, n: number, where: string): PretrainExtra {
  const { order, smoothed, tokens } = x;
  if (!Array.isArray(order) || !order.every((i) => Number.isInteger(i) && i >= 0 && i < n) || typeof smoothed !== 'number' || typeof tokens !== 'number') {
    throw new QrlhfError(`${where}: "extra" must hold order (dialogue indices below ${n}), smoothed and tokens (numbers)`);
  }
  return { order: order as number[], smoothed, tokens };
}

/**
 * Trains the base model and saves it as a Hugging Face folder; returns the last smoothed loss.
 * The run folder, checkpoints, metrics and the update loop are core's training scaffold (as SFT's
 * and RLOO's); what is pretraining's is the corpus, the batch order and the loss.
 */
export async function pretrainBase(cfg: PretrainConfig, o: PretrainFiles, hooks: PretrainHooks = {}): Promise<{ loss: number; params: number; tokens: number }> {
  const run = TrainingRun.open({ out: o.run, kind: 'pretrain', resume: true });
  const held: { model?: LlamaModel; opt?: AdamW; tracker?: Tracker } = {};
  try {
    return await pretrainIn(run, cfg, o, hooks, held);
  } finally {
    held.opt?.dispose();
    held.model?.dispose();
    await held.tracker?.close();
    run.release();
  }
}

/** pretrainBase's work in its held run folder; what it allocates goes into `held` (freed by the caller). */
async function pretrainIn(
  run: TrainingRun,
  cfg: PretrainConfig,
  o: PretrainFiles,
  hooks: PretrainHooks,
  held: { model?: LlamaModel; opt?: AdamW; tracker?: Tracker },
): Promise<{ loss: number; params: number; tokens: number }> {
  const tok = await Tokenizer.fromFile(o.tokenizer);
  const texts = await readJsonlAll(o.corpus, (row, where) => {
    const t = (row as { text?: unknown }).text;
    if (typeof t !== 'string') throw new QrlhfError(`${where}: expected {"text": string}`);
    return t;
  });
  if (texts.length === 0) throw new QrlhfError(`${o.corpus}: no dialogues`);
  const seqs = texts.map((t) => [tok.bosId, ...tok.encode(t, { addBos: false }), tok.eosId]);
  const config: LlamaConfig = {
    hiddenSize: cfg.hiddenSize,
    intermediateSize: cfg.intermediateSize,
    numLayers: cfg.numLayers,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numKvHeads,
    rmsNormEps: cfg.rmsNormEps,
    ropeTheta: cfg.ropeTheta,
    tieWordEmbeddings: cfg.tieWordEmbeddings,
    maxPositionEmbeddings: cfg.maxPositionEmbeddings,
    vocabSize: tok.vocabSize,
    bosTokenId: tok.bosId,
    eosTokenId: tok.eosId,
    padTokenId: tok.padId,
  };
  const longest = Math.max(...seqs.map((s) => s.length));
  if (longest > config.maxPositionEmbeddings) {
    throw new QrlhfError(`${o.corpus}: a dialogue has ${longest} tokens, over maxPositionEmbeddings ${config.maxPositionEmbeddings}`);
  }
  const { checkpointEvery, ...trajectory } = cfg;
  const state = run.restore({ ...trajectory, corpus: o.corpus, tokenizer: o.tokenizer });
  const where = join(run.checkpointDir, 'state.json');
  const rng = state ? new Rng(cfg.seed, state.rng) : new Rng(cfg.seed);
  const model = (held.model = LlamaModel.random(config, cfg.seed));
  if (state) {
    for (const [k, v] of Object.entries(model.weights)) {
      const t = state.variables[k];
      if (!t || t.shape.join() !== v.shape.join()) throw new QrlhfError(`${where}: weight "${k}" is missing or not of shape [${v.shape}]`);
      v.assign(t);
    }
    for (const t of Object.values(state.variables)) t.dispose();
  }
  for (const v of Object.values(model.weights)) v.trainable = true;
  const params = Object.values(model.weights).reduce((a, v) => a + v.size, 0);
  const opt = (held.opt = new AdamW(model.weights, { lr: cfg.lr, weightDecay: cfg.weightDecay }));
  restoreOptimizer(opt, state);
  const trained = { variables: model.weights, optimizer: opt, rng };
  const start = state?.step ?? 0;
  if (start > cfg.steps) throw new QrlhfError(`${where}: the checkpoint is at step ${start}, past this config's ${cfg.steps} steps`);
  const schedule = cosineSchedule({ lr: cfg.lr, warmupSteps: cfg.warmupSteps, totalSteps: cfg.steps, minLr: cfg.minLr ?? cfg.lr / 10 });
  const tracker = (held.tracker = await run.track({
    config: { ...cfg, corpus: o.corpus, tokenizer: o.tokenizer, out: o.out },
    start,
    total: cfg.steps,
    label: 'pretrain',
    keys: ['train/loss_smoothed', 'train/lr'],
    console: !hooks.quiet,
    wandbProject: null,
  }));
  let { order, smoothed, tokens } = state ? pretrainExtra(state.extra, seqs.length, where) : { order: [] as number[], smoothed: NaN, tokens: 0 };
  // One update: the next batchSize dialogues of a reshuffled-per-epoch order, the mean next-token
  // loss over their tokens (every parameter trained), clipped, AdamW on the cosine schedule.
  const pretrainStep = async ({ index }: StepContext): Promise<Metrics> => {
    if (order.length < cfg.batchSize) order = order.concat(rng.shuffle(seqs.map((_, i) => i)));
    const batch = order.splice(0, cfg.batchSize).map((i) => seqs[i]!);
    const T = Math.max(...batch.map((s) => s.length));
    const ids = new Int32Array(batch.length * T).fill(tok.padId);
    const mask = new Float32Array(batch.length * T);
    batch.forEach((s, b) => {
      ids.set(s, b * T);
      mask.fill(1, b * T, b * T + s.length);
    });
    const count = mask.reduce((a, x) => a + x, 0) - batch.length;
    tokens += count;
    const { grads, loss } = await accumulateGradients([{ ids, mask }], (mb) => {
      const idsT = tf.tensor2d(mb.ids, [batch.length, T], 'int32');
      const maskT = tf.tensor2d(mb.mask, [batch.length, T]);
      return tf.neg(tf.div(tf.sum(sequenceLogProbs(model, idsT, maskT, maskT)), count)) as tf.Scalar;
    }, model.weights);
    const lr = schedule(index + 1);
    const norm = await applyGradients(opt, grads, lr, cfg.gradClip);
    if (!Number.isFinite(norm) || !Number.isFinite(loss)) {
      throw new QrlhfError(`pretrain: step ${index + 1}: the loss or the gradient is not finite (loss ${loss}, grad norm ${norm}); lower lr`);
    }
    smoothed = Number.isNaN(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
    return { step: index + 1, 'train/loss': loss, 'train/loss_smoothed': smoothed, 'train/lr': lr, 'train/grad_norm': norm };
  };
  await runTrainingLoop({
    start,
    total: cfg.steps,
    step: pretrainStep,
    logEvery: 1,
    log: (row) => tracker.log(row),
    checkpoint: { every: checkpointEvery, save: (s) => run.save(s, trained, { order, smoothed, tokens } satisfies PretrainExtra) },
    ...(hooks.onStep ? { onStep: hooks.onStep } : {}),
  });
  for (const v of Object.values(model.weights)) v.trainable = false;
  await saveHfFolder(o.out, model, tok);
  return { loss: smoothed, params, tokens };
}

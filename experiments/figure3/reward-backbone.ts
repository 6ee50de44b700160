/**
 * A reward backbone for the QRM: a copy of the base model fine-tuned, every parameter, to predict
 * the attribute ratings (the paper's QRM reads its features off a reward model, not off a plain
 * language model). The frozen base model's hidden states are made to predict the next token: a
 * garbled sentence that shares words with a good answer gets nearly the same mean-pooled feature,
 * and RL finds those sentences. Fine-tuned on the rated responses (the world's and the SFT policy's
 * own, garbled ones among them), the backbone's last layer is made to carry what the raters react
 * to; the QRM's linear quantile heads and its gate are then fitted on its features as before, and
 * it scores RL's responses with it.
 *
 * Objective: masked mean squared error of a linear read-out of the pooled feature against each
 * row's attribute labels (a missing label is left out),
 *   L = Σ_{i,m} o_{im} (w_m · f_i + b_m − y_{im})² / Σ_{i,m} o_{im},
 * with f_i pooled as the QRM's features are (@qrlhf/qrm's poolResponses: the 'mean' or the
 * per-dimension 'max' over the response's tokens, or the 'last' token). The read-out is thrown
 * away: only the backbone is kept.
 */
import * as tf from '@tensorflow/tfjs';
import {
  AdamW,
  Progress,
  QrlhfError,
  Rng,
  accumulateGradients,
  applyGradients,
  cosineSchedule,
  defineConfig,
  loadModel,
  runTrainingLoop,
  saveHfFolder,
  seedField,
  type ConfigOf,
  type Metrics,
  type StepContext,
} from '@qrlhf/core';
import { encodePair, poolResponses, readRatings, type FeaturePooling } from '@qrlhf/qrm';

/** The reward-backbone stage (the experiment's `rewardBackbone` block). */
export const REWARD_BACKBONE_SCHEMA = defineConfig({
  steps: { type: 'int', default: 0, min: 0, doc: 'training steps; 0 = no reward backbone (the QRM reads the frozen base model, SPEC §4)' },
  batchSize: { type: 'int', default: 32, min: 1, doc: 'rating rows per step' },
  lr: { type: 'number', default: 1e-3, min: 0, minExclusive: true, doc: 'peak learning rate of the cosine schedule' },
  warmupSteps: { type: 'int', default: 10, min: 0, doc: 'linear warm-up steps' },
  weightDecay: { type: 'number', default: 0.01, min: 0, doc: "AdamW's decoupled weight decay" },
  gradClip: { type: 'number', default: 1, min: 0, minExclusive: true, doc: 'clip the global gradient norm to this' },
  seed: seedField('seed of the read-out init and of the batch order'),
});
export type RewardBackboneConfig = ConfigOf<typeof REWARD_BACKBONE_SCHEMA>;

/**
 * Fine-tunes the model in `base` on the rating rows of `ratings` (jsonl of {prompt, response,
 * <attribute>: number | null}) and saves it as a Hugging Face folder at `out`. Returns the last
 * smoothed loss and the loss of the constant predictor (each attribute's mean), for scale.
 */
export async function trainRewardBackbone(
  cfg: RewardBackboneConfig,
  o: { base: string; ratings: string; attributes: readonly string[]; pooling: FeaturePooling; out: string },
): Promise<{ loss: number; baselineLoss: number; rows: number }> {
  const { model, tokenizer } = await loadModel(o.base);
  try {
    const M = o.attributes.length;
    const rows = (await readRatings(o.ratings)).map((r, i) => {
      const y = o.attributes.map((a) => r.labels[a] ?? NaN); // missing or null: masked out of the loss
      const enc = encodePair(tokenizer, r.prompt, r.response, model.config.maxPositionEmbeddings, `${o.ratings}: row ${i + 1}`);
      return { ids: enc.ids, promptEnd: enc.promptEnd, y };
    });
    if (rows.length === 0) throw new QrlhfError(`${o.ratings}: no rating rows`);
    // the constant predictor's loss: the scale a trained read-out is measured against
    const means = o.attributes.map((_, m) => {
      const v = rows.map((r) => r.y[m]!).filter((x) => !Number.isNaN(x));
      return v.reduce((a, x) => a + x, 0) / Math.max(1, v.length);
    });
    let sq = 0, cnt = 0;
    for (const r of rows) r.y.forEach((v, m) => { if (!Number.isNaN(v)) { sq += (v - means[m]!) ** 2; cnt++; } });
    const baselineLoss = sq / Math.max(1, cnt);

    const d = model.config.hiddenSize;
    const rng = new Rng(`reward-backbone-${cfg.seed}`);
    const w = tf.variable(tf.zeros([d, M]), true, 'reward_readout_w');
    const b = tf.variable(tf.tensor1d(means), true, 'reward_readout_b');
    for (const v of Object.values(model.weights)) v.trainable = true;
    const vars: Record<string, tf.Variable> = { ...model.weights, reward_readout_w: w, reward_readout_b: b };
    const opt = new AdamW(vars, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    const schedule = cosineSchedule({ lr: cfg.lr, warmupSteps: Math.min(cfg.warmupSteps, cfg.steps), totalSteps: cfg.steps, minLr: cfg.lr / 10 });
    const progress = new Progress(cfg.steps, 'reward backbone');
    let order: number[] = [];
    let smoothed = NaN;
    // One update on core's scaffold (accumulateGradients, applyGradients, runTrainingLoop): the next
    // batchSize rating rows of a reshuffled-per-epoch order, the masked MSE above, clipped, AdamW.
    const backboneStep = async ({ index }: StepContext): Promise<Metrics> => {
      if (order.length < cfg.batchSize) order = order.concat(rng.shuffle(rows.map((_, i) => i)));
      const batch = order.splice(0, cfg.batchSize).map((i) => rows[i]!);
      const B = batch.length;
      const T = Math.max(...batch.map((r) => r.ids.length));
      const ids = new Int32Array(B * T).fill(tokenizer.padId);
      const mask = new Float32Array(B * T);
      const y = new Float32Array(B * M);
      const seen = new Float32Array(B * M);
      batch.forEach((r, i) => {
        ids.set(r.ids, i * T);
        mask.fill(1, i * T, i * T + r.ids.length);
        r.y.forEach((v, m) => { if (!Number.isNaN(v)) { y[i * M + m] = v; seen[i * M + m] = 1; } });
      });
      const count = seen.reduce((a, x) => a + x, 0);
      const { grads, loss } = await accumulateGradients([0], () => {
        const h = model.hidden(tf.tensor2d(ids, [B, T], 'int32'), { mask: tf.tensor2d(mask, [B, T]) });
        const f = poolResponses(h, batch, o.pooling);
        const pred = tf.add(tf.matMul(f, w), b);
        return tf.div(tf.sum(tf.mul(tf.tensor2d(seen, [B, M]), tf.square(tf.sub(pred, tf.tensor2d(y, [B, M]))))), Math.max(1, count)) as tf.Scalar;
      }, vars);
      const norm = await applyGradients(opt, grads, schedule(index + 1), cfg.gradClip);
      if (!Number.isFinite(loss) || !Number.isFinite(norm)) throw new QrlhfError(`reward backbone: the loss or the gradient is not finite at step ${index + 1} (lower lr)`);
      smoothed = Number.isNaN(smoothed) ? loss : 0.9 * smoothed + 0.1 * loss;
      return { step: index + 1, 'train/loss': loss, 'train/loss_smoothed': smoothed };
    };
    await runTrainingLoop({
      start: 0,
      total: cfg.steps,
      step: backboneStep,
      logEvery: 1,
      log: () => progress.tick(1, `mse ${smoothed.toFixed(4)} (constant: ${baselineLoss.toFixed(4)})`),
    });
    progress.done();
    for (const v of Object.values(model.weights)) v.trainable = false;
    tf.dispose([w, b]);
    await saveHfFolder(o.out, model, tokenizer);
    return { loss: smoothed, baselineLoss, rows: rows.length };
  } finally {
    model.dispose();
  }
}

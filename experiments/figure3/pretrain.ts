/**
 * The tiny base model of the Figure 3 world: a Llama trained from random weights, every parameter,
 * with the next-token loss on whole dialogues of the world's pretraining corpus. The paper starts
 * from a pretrained Llama; here nothing can be downloaded, so the base model is made in a minute or
 * two, then goes through the same SFT / QRM / RLOO code as a real checkpoint would.
 */
import * as tf from '@tensorflow/tfjs';
import {
  AdamW,
  LlamaModel,
  Progress,
  QrlhfError,
  Rng,
  Tokenizer,
  clipGradNorm,
  cosineSchedule,
  readJsonlAll,
  saveHfFolder,
  sequenceLogProbs,
  type LlamaConfig,
} from '@qrlhf/core';

export interface PretrainOptions {
  corpus: string;
  tokenizer: string;
  out: string;
  model: Omit<LlamaConfig, 'vocabSize' | 'bosTokenId' | 'eosTokenId' | 'padTokenId'>;
  steps: number;
  batchSize: number;
  lr: number;
  warmupSteps: number;
  seed: number;
  onLog?: (m: { step: number; loss: number; lr: number }) => void;
}

/** Trains the base model and saves it as a Hugging Face folder; returns the last smoothed loss. */
export async function pretrainBase(o: PretrainOptions): Promise<{ loss: number; params: number; tokens: number }> {
  const tok = await Tokenizer.fromFile(o.tokenizer);
  const texts = await readJsonlAll(o.corpus, (row, where) => {
    const t = (row as { text?: unknown }).text;
    if (typeof t !== 'string') throw new QrlhfError(`${where}: expected {"text": string}`);
    return t;
  });
  if (texts.length === 0) throw new QrlhfError(`${o.corpus}: no dialogues`);
  const seqs = texts.map((t) => [tok.bosId, ...tok.encode(t, { addBos: false }), tok.eosId]);
  const config: LlamaConfig = {
    ...o.model,
    vocabSize: tok.vocabSize,
    bosTokenId: tok.bosId,
    eosTokenId: tok.eosId,
    padTokenId: tok.padId,
  };
  const longest = Math.max(...seqs.map((s) => s.length));
  if (longest > config.maxPositionEmbeddings) {
    throw new QrlhfError(`${o.corpus}: a dialogue has ${longest} tokens, over maxPositionEmbeddings ${config.maxPositionEmbeddings}`);
  }
  const rng = new Rng(o.seed);
  const model = LlamaModel.random(config, o.seed);
  for (const v of Object.values(model.weights)) v.trainable = true;
  const params = Object.values(model.weights).reduce((a, v) => a + v.size, 0);
  const opt = new AdamW(model.weights, { lr: o.lr, weightDecay: 0.01 });
  const schedule = cosineSchedule({ lr: o.lr, warmupSteps: o.warmupSteps, totalSteps: o.steps, minLr: o.lr / 10 });
  const progress = new Progress(o.steps, 'pretrain');
  let order: number[] = [];
  let smoothed = NaN;
  let tokens = 0;
  for (let step = 1; step <= o.steps; step++) {
    if (order.length < o.batchSize) order = order.concat(rng.shuffle(seqs.map((_, i) => i)));
    const batch = order.splice(0, o.batchSize).map((i) => seqs[i]!);
    const T = Math.max(...batch.map((s) => s.length));
    const ids = new Int32Array(batch.length * T).fill(tok.padId);
    const mask = new Float32Array(batch.length * T);
    batch.forEach((s, b) => {
      ids.set(s, b * T);
      mask.fill(1, b * T, b * T + s.length);
    });
    const count = mask.reduce((a, x) => a + x, 0) - batch.length;
    tokens += count;
    const idsT = tf.tensor2d(ids, [batch.length, T], 'int32');
    const maskT = tf.tensor2d(mask, [batch.length, T]);
    const { value, grads } = tf.variableGrads(
      () => tf.neg(tf.div(tf.sum(sequenceLogProbs(model, idsT, maskT, maskT)), count)) as tf.Scalar,
      Object.values(model.weights),
    );
    const named: Record<string, tf.Tensor> = {};
    for (const [name, v] of Object.entries(model.weights)) named[name] = grads[v.name]!;
    const clipped = await clipGradNorm(named, 1);
    const lr = schedule(step);
    opt.step(clipped.grads, lr);
    const loss = (await value.data())[0]!;
    tf.dispose([idsT, maskT, value, ...Object.values(grads), ...Object.values(clipped.grads)]);
    smoothed = Number.isNaN(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
    o.onLog?.({ step, loss, lr });
    progress.tick(1, `loss ${smoothed.toFixed(3)}`);
  }
  progress.done();
  for (const v of Object.values(model.weights)) v.trainable = false;
  await saveHfFolder(o.out, model, tok);
  model.dispose();
  return { loss: smoothed, params, tokens };
}

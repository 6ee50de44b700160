// Child of kernel-loss.test.ts: five LoRA training steps (plain gradient descent) of a small
// Llama on fixed tokens, with whatever kernels the environment selects; prints the losses.
import * as tf from '@tensorflow/tfjs';
import { initBackend, LlamaModel, Rng, sequenceLogProbs, type LlamaConfig } from '../src/index.js';

await initBackend('wasm', { quiet: true });
const cfg: LlamaConfig = {
  vocabSize: 300, hiddenSize: 64, intermediateSize: 176, numLayers: 2, numHeads: 4, numKvHeads: 2,
  maxPositionEmbeddings: 128, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, bosTokenId: 1, eosTokenId: 2,
};
const model = LlamaModel.random(cfg, 5);
const rng = new Rng(6);
const adapter = model.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: 'all-linear' }, rng);
const B = 3, T = 40;
const ids = tf.tensor2d(Array.from({ length: B }, () => Array.from({ length: T }, () => 3 + Math.floor(rng.next() * 290))), [B, T], 'int32');
const mask = tf.ones([B, T]) as tf.Tensor2D;
const vars = Object.values(adapter.variables);
const losses: number[] = [];
for (let step = 0; step < 5; step++) {
  const { value, grads } = tf.variableGrads(() => tf.neg(tf.mean(sequenceLogProbs(model, ids, mask, mask, { training: true }))) as tf.Scalar, vars);
  losses.push(value.dataSync()[0]!);
  tf.tidy(() => {
    for (const v of vars) v.assign(tf.sub(v, tf.mul(grads[v.name]!, 0.5)));
  });
  value.dispose();
  tf.dispose(grads);
}
console.log(JSON.stringify({ losses }));

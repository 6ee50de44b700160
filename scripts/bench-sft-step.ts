/**
 * One SFT training step (forward + backward of the LoRA loss, as runSft computes it) timed at
 * several micro-batch sizes and sequence lengths, each in a fresh process, with the wasm heap's
 * high-water mark (its size after the steps: wasm memory only grows), the process's peak resident
 * memory, and trainingMemoryEstimate's figure for the same shape, so the estimate that runSft
 * checks before a run can be compared with what a step really takes.
 *
 * Usage: npm run bench:sft-step -- [--model FILE | --model random:d=128,layers=2,heads=4,kv=2,ffn=344,vocab=1024]
 *        [--batches 1,2,4,8] [--lengths 256,512] [--reps 3]
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Rng, initBackend, loadModel, sequenceLogProbs, trainingMemoryEstimate, type LlamaConfig } from '@qrlhf/core';

function flag(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}
const modelSpec = flag('model', '../shared/data/models/stories260K/stories260K.bin');
const reps = Number(flag('reps', '3'));
const LORA = { r: 32, alpha: 64, dropout: 0.05, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const };

async function model(): Promise<LlamaModel> {
  if (!modelSpec.startsWith('random:')) return (await loadModel(modelSpec)).model;
  const o = Object.fromEntries(modelSpec.slice(7).split(',').map((kv) => kv.split('=')).map(([k, v]) => [k, Number(v)]));
  const config: LlamaConfig = {
    vocabSize: o['vocab'] ?? 1024, hiddenSize: o['d'] ?? 128, intermediateSize: o['ffn'] ?? 344, numLayers: o['layers'] ?? 2,
    numHeads: o['heads'] ?? 4, numKvHeads: o['kv'] ?? 2, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false,
    maxPositionEmbeddings: 4096, bosTokenId: 1, eosTokenId: 2,
  };
  return LlamaModel.random(config, 1);
}

/** Child: one (batch, length), printed as one JSON line. */
async function one(B: number, T: number): Promise<void> {
  await initBackend('auto', { quiet: true });
  const m = await model();
  m.addLora({ ...LORA, targetModules: [...LORA.targetModules] }, new Rng(0));
  const vars = Object.values(m.lora!.variables);
  const rng = new Rng(1);
  const ids = tf.tensor2d(Int32Array.from({ length: B * T }, () => rng.int(m.config.vocabSize)), [B, T], 'int32');
  const mask = tf.ones([B, T]) as tf.Tensor2D;
  const base = (tf.backend() as unknown as { wasm?: { HEAPU8: Uint8Array } }).wasm?.HEAPU8.buffer.byteLength ?? NaN;
  let secs = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    const { value, grads } = tf.variableGrads(() => tf.neg(tf.mean(sequenceLogProbs(m, ids, mask, mask, { training: true }))) as tf.Scalar, vars);
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
    secs = Math.min(secs, (performance.now() - t0) / 1000);
  }
  const heap = (tf.backend() as unknown as { wasm?: { HEAPU8: Uint8Array } }).wasm?.HEAPU8.buffer.byteLength ?? NaN;
  const est = trainingMemoryEstimate(m.config, { batch: B, length: T });
  console.log(JSON.stringify({ B, T, secs, heap, base, rss: process.resourceUsage().maxRSS * 1024, est, backend: tf.getBackend() }));
}

const oneArg = flag('one', '');
if (oneArg) {
  const [B, T] = oneArg.split(',').map(Number);
  await one(B!, T!);
} else {
  const batches = flag('batches', '1,2,4,8').split(',').map(Number);
  const lengths = flag('lengths', '256,512').split(',').map(Number);
  const MB = (x: number) => (x / 2 ** 20).toFixed(0);
  const self = fileURLToPath(import.meta.url);
  console.log(`model ${modelSpec}; LoRA r ${LORA.r} on ${LORA.targetModules.join(',')}; best of ${reps} steps; each row a fresh process`);
  console.log('| batch | length | s/step | wasm heap MB (high-water) | heap growth MB | estimate MB | max RSS MB |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|');
  for (const T of lengths) {
    for (const B of batches) {
      let line: string;
      try {
        line = execFileSync(process.execPath, [...process.execArgv, self, '--model', modelSpec, '--reps', String(reps), '--one', `${B},${T}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (e) {
        const msg = (e as { stderr?: string }).stderr?.split('\n').find((l) => l.includes('qrlhf') || l.includes('Error')) ?? String(e);
        console.log(`| ${B} | ${T} | failed: ${msg.slice(0, 120)} | | | | |`);
        continue;
      }
      const r = JSON.parse(line.trim().split('\n').pop()!) as { secs: number; heap: number; base: number; rss: number; est: number };
      console.log(`| ${B} | ${T} | ${r.secs.toFixed(2)} | ${MB(r.heap)} | ${MB(r.heap - r.base)} | ${MB(r.est)} | ${MB(r.rss)} |`);
    }
  }
}

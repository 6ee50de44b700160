/**
 * How much memory one training step needs, told before a run starts rather than found out by it.
 *
 * Why this exists: a training forward keeps every intermediate for the backward pass, and
 * attention's are [B, H, T, T] per layer: at B = 8, T = 1024 on a 5-layer, 8-head model that alone
 * is over 8 GiB, twice what the wasm backend can address (a wasm32 heap ends at 4 GiB). Past that,
 * tfjs's wasm backend did not check malloc's null and wrote tensors over the heap's own records
 * (issue 12: an SFT step that never ended, in `free`); setup.ts now fails that allocation loudly,
 * and the trainers compare this estimate with the backend's limit before the first step.
 *
 *   bytes ≈ 4 · B · (6 · L · H · T² + T · (150 · L · d + 6 · V))
 *
 * L layers, H query heads, d hidden size, V vocabulary. The coefficients are fitted to the wasm
 * heap's high-water mark of one LoRA training step (scripts/bench-sft-step.ts, a fresh process per
 * shape) on three model shapes (stories260K; d 128 / 2 layers / 4 heads / V 4096; d 256 / 3 layers /
 * 8 heads / V 512) at B 1-8, T 128-512: the estimate was 10 % under to 30 % over the measurement.
 * About six [H, T, T] tensors per layer stay alive at the peak (scores, scores + mask, softmax,
 * their gradients); the per-token term holds the projections, norms, rotary tables and the logits.
 */
import { totalmem } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { LlamaConfig } from './config.js';

/** Estimated bytes of the activations (and their gradients) of one training step of `batch` sequences of `length` tokens. */
export function trainingMemoryEstimate(c: LlamaConfig, s: { batch: number; length: number }): number {
  const { batch: B, length: T } = s;
  const perSequence = 6 * c.numLayers * c.numHeads * T * T + T * (150 * c.numLayers * c.hiddenSize + 6 * c.vocabSize);
  return 4 * B * perSequence;
}

/**
 * The most memory the current backend can hold: 4 GiB on wasm (a 32-bit heap), the machine's RAM
 * otherwise; `QRLHF_MEMORY_LIMIT_MIB` sets it (a GPU's memory, or a smaller share of a machine).
 */
export function backendMemoryLimit(): { bytes: number; what: string } {
  const env = process.env['QRLHF_MEMORY_LIMIT_MIB'];
  if (env !== undefined && env !== '') {
    const mib = Number(env);
    if (!(mib > 0)) throw new QrlhfError(`QRLHF_MEMORY_LIMIT_MIB: expected a number of MiB > 0, got "${env}"`);
    return { bytes: mib * 2 ** 20, what: `QRLHF_MEMORY_LIMIT_MIB's ${gib(mib * 2 ** 20)}` };
  }
  if (tf.getBackend() === 'wasm') return { bytes: 2 ** 32, what: "the wasm backend's 4 GiB heap" };
  return { bytes: totalmem(), what: `this machine's ${gib(totalmem())} of memory` };
}

export function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/**
 * Whether a training step of `batch` × `length` fits in what the backend has left (its limit less
 * the tensors already held), and the largest batch that does at that length (0 if none).
 */
export function checkTrainingMemory(c: LlamaConfig, batch: number, length: number) {
  const limit = backendMemoryLimit();
  const held = tf.memory().numBytes;
  const available = Math.max(0, limit.bytes - held);
  const need = trainingMemoryEstimate(c, { batch, length });
  const one = trainingMemoryEstimate(c, { batch: 1, length });
  return { need, available, limit, fits: need <= available, maxBatch: Math.floor(available / one) };
}

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
import { type LlamaConfig, headDim } from './config.js';
import { llamaWeightShapes } from './llama.js';
import { LORA_MODULES, type LoraModule } from './lora.js';

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

/*
 * Loading (loadModel) checks a whole plan before any weight is read: weights, LoRA, optimiser and
 * activations, all float32 (4 bytes):
 *
 *   weights      = 4 · Σ parameter counts (llamaWeightShapes)
 *   lora         = 4 · Σ_layers Σ_targets r · (in + out)         (×2 with its gradients when training)
 *   optimiser    = 2 · lora values                               (AdamW's two moments; training only)
 *   activations  = trainingMemoryEstimate when training; when generating, the KV cache
 *                  4 · B · 2 · L · Hkv · hd · T plus one layer's working set and the logits.
 */

export interface MemoryPlan {
  batch: number;
  seqLen: number;
  /** Training (gradients, optimiser, saved activations) or generation only. */
  training: boolean;
  /** The adapter trained or applied, if any. */
  lora?: { r: number; targetModules: string[] | 'all-linear' } | null;
}

export interface MemoryEstimate {
  weights: number;
  lora: number;
  optimizer: number;
  activations: number;
  total: number;
}

export function parameterCount(c: LlamaConfig): number {
  return Object.values(llamaWeightShapes(c)).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
}

export function estimateMemory(c: LlamaConfig, plan: MemoryPlan): MemoryEstimate {
  const { hiddenSize: d, intermediateSize: I, numHeads: H, numKvHeads: Hkv, numLayers: L, vocabSize: V } = c;
  const hd = headDim(c);
  const weights = 4 * parameterCount(c);
  let loraParams = 0;
  if (plan.lora) {
    const dims: Record<LoraModule, [number, number]> = {
      q_proj: [d, H * hd], k_proj: [d, Hkv * hd], v_proj: [d, Hkv * hd], o_proj: [H * hd, d],
      gate_proj: [d, I], up_proj: [d, I], down_proj: [I, d],
    };
    const targets = plan.lora.targetModules === 'all-linear' ? LORA_MODULES : LORA_MODULES.filter((m) => (plan.lora!.targetModules as string[]).includes(m));
    for (const m of targets) loraParams += L * plan.lora.r * (dims[m][0] + dims[m][1]);
  }
  const T = plan.seqLen;
  const lora = 4 * loraParams * (plan.training ? 2 : 1);
  const optimizer = plan.training ? 2 * 4 * loraParams : 0;
  // Training: the fitted estimate above. Generating: the KV cache, one layer's working set (its
  // projections and the [H, T] scores of a step) and the logits.
  const perToken = 6 * d + 3 * (H + 2 * Hkv) * hd + 2 * H * T + 4 * I;
  const activations = plan.training
    ? trainingMemoryEstimate(c, { batch: plan.batch, length: T })
    : 4 * plan.batch * (2 * L * Hkv * hd * T + perToken * T + 2 * V);
  return { weights, lora, optimizer, activations, total: weights + lora + optimizer + activations };
}

/** One line: what the plan needs, in parts. */
export function describeMemory(e: MemoryEstimate, plan: MemoryPlan): string {
  const parts = [`weights ${gib(e.weights)}`];
  if (e.lora) parts.push(`LoRA ${gib(e.lora)}`);
  if (e.optimizer) parts.push(`optimiser ${gib(e.optimizer)}`);
  parts.push(`activations ${gib(e.activations)} at batch ${plan.batch} × ${plan.seqLen} tokens`);
  return `about ${gib(e.total)} (${parts.join(', ')})`;
}

/**
 * Throws one QrlhfError naming `where` when the plan will not fit in the memory available: how
 * much it needs, how much there is, and what to change.
 */
export function checkMemory(c: LlamaConfig, plan: MemoryPlan, where: string, available = backendMemoryLimit()): MemoryEstimate {
  const e = estimateMemory(c, plan);
  if (e.total > available.bytes) {
    const act = e.activations > e.total / 3;
    const advice = e.weights > available.bytes
      ? 'the weights alone do not fit: use a smaller model' + (available.what.includes('wasm') ? ' or a backend without the wasm heap\'s 4 GiB limit (tensorflow)' : '')
      : act
        ? 'lower the batch size or the sequence length'
        : 'lower the LoRA rank or the number of target modules, or use a smaller model';
    throw new QrlhfError(`${where}: the model needs ${describeMemory(e, plan)} but only ${gib(available.bytes)} is available (${available.what}); ${advice}`);
  }
  return e;
}

/**
 * An independent float64 Llama forward pass in plain JavaScript, written from SPEC §2 (one token,
 * one head at a time, no tfjs), and a generator of small random models for the model tests.
 * Not a test file itself (no .test. in the name): the model-*.test.ts files import it.
 */
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Rng, type LlamaConfig } from '@qrlhf/core';

export type Weights = Record<string, { shape: number[]; data: Float32Array }>;

export function smallConfig(over: Partial<LlamaConfig> = {}): LlamaConfig {
  return {
    vocabSize: 29,
    hiddenSize: 16,
    intermediateSize: 24,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: false,
    maxPositionEmbeddings: 128,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: 0,
    ...over,
  };
}

/** Random weights large enough that logits differ clearly between tokens (std 0.4, norms 1 ± 0.3). */
export function randomWeights(c: LlamaConfig, seed: number): Weights {
  const rng = new Rng(seed);
  const hd = c.headDim ?? c.hiddenSize / c.numHeads;
  const d = c.hiddenSize;
  const shapes: Record<string, number[]> = { 'model.embed_tokens.weight': [c.vocabSize, d], 'model.norm.weight': [d] };
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    shapes[`${p}.input_layernorm.weight`] = [d];
    shapes[`${p}.post_attention_layernorm.weight`] = [d];
    shapes[`${p}.self_attn.q_proj.weight`] = [c.numHeads * hd, d];
    shapes[`${p}.self_attn.k_proj.weight`] = [c.numKvHeads * hd, d];
    shapes[`${p}.self_attn.v_proj.weight`] = [c.numKvHeads * hd, d];
    shapes[`${p}.self_attn.o_proj.weight`] = [d, c.numHeads * hd];
    shapes[`${p}.mlp.gate_proj.weight`] = [c.intermediateSize, d];
    shapes[`${p}.mlp.up_proj.weight`] = [c.intermediateSize, d];
    shapes[`${p}.mlp.down_proj.weight`] = [d, c.intermediateSize];
  }
  if (!c.tieWordEmbeddings) shapes['lm_head.weight'] = [c.vocabSize, d];
  const w: Weights = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = name.endsWith('norm.weight') ? 1 + 0.3 * rng.normal() : 0.4 * rng.normal();
    w[name] = { shape, data };
  }
  return w;
}

export function modelFrom(c: LlamaConfig, w: Weights): LlamaModel {
  const tensors: Record<string, tf.Tensor> = {};
  for (const [k, v] of Object.entries(w)) tensors[k] = tf.tensor(v.data, v.shape);
  return LlamaModel.fromTensors(c, tensors);
}

/** Matrix [out, in] (row-major) times vector. */
function matVec(W: ArrayLike<number>, out: number, inp: number, x: number[]): number[] {
  const y = new Array<number>(out).fill(0);
  for (let o = 0; o < out; o++) {
    let s = 0;
    for (let i = 0; i < inp; i++) s += W[o * inp + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

function rms(x: number[], w: ArrayLike<number>, eps: number): number[] {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  const r = 1 / Math.sqrt(ms + eps);
  return x.map((v, i) => v * r * w[i]!);
}

/**
 * The rotary inverse frequencies in float64, written from the published formulas: theta^(-2i/hd);
 * rope_scaling "linear" divides them all by factor; "llama3" (Meta's apply_scaling in llama3.1's
 * reference code, transformers' _compute_llama3_parameters) keeps those whose wavelength 2π/f is
 * below original/high_freq_factor, divides those above original/low_freq_factor by factor, and in
 * between blends f/factor and f with weight smooth = (original/wavelength - low) / (high - low).
 */
export function referenceInvFreq(c: LlamaConfig): number[] {
  const hd = c.headDim ?? c.hiddenSize / c.numHeads;
  const base: number[] = [];
  for (let j = 0; j < hd; j += 2) base.push(1 / c.ropeTheta ** (j / hd));
  const s = c.ropeScaling;
  if (!s) return base;
  if (s.ropeType === 'linear') return base.map((f) => f / s.factor);
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  return base.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / s.factor;
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}

/** Rotate-half RoPE on one head vector at position p: pairs (i, i + hd/2), frequencies inv. */
function rope(x: number[], p: number, inv: number[]): number[] {
  const hd = x.length;
  const half = hd / 2;
  const y = x.slice();
  for (let i = 0; i < half; i++) {
    const a = p * inv[i]!;
    const [c, s] = [Math.cos(a), Math.sin(a)];
    y[i] = x[i]! * c - x[i + half]! * s;
    y[i + half] = x[i + half]! * c + x[i]! * s;
  }
  return y;
}

/**
 * Logits [B][T][V] in float64. mask[b][t] = 0 marks a pad: it takes no position and no query sees
 * it. Rows at pad positions are not meaningful. `overrides` replaces weights (e.g. merged LoRA).
 */
export function referenceLogits(
  c: LlamaConfig,
  w: Weights,
  ids: number[][],
  mask?: number[][],
  overrides: Record<string, Float64Array> = {},
): number[][][] {
  const W = (name: string): ArrayLike<number> => overrides[name] ?? w[name]!.data;
  const d = c.hiddenSize;
  const hd = c.headDim ?? d / c.numHeads;
  const inv = referenceInvFreq(c);
  const g = c.numHeads / c.numKvHeads;
  const I = c.intermediateSize;
  return ids.map((row, b) => {
    const m = mask ? mask[b]! : row.map(() => 1);
    const T = row.length;
    const pos: number[] = [];
    let count = 0;
    for (let t = 0; t < T; t++) {
      count += m[t]!;
      pos.push(Math.max(0, count - 1));
    }
    const E = W('model.embed_tokens.weight');
    let x = row.map((id) => Array.from({ length: d }, (_, j) => E[id * d + j]!));
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}`;
      const n = x.map((v) => rms(v, W(`${p}.input_layernorm.weight`), c.rmsNormEps));
      const q = n.map((v) => matVec(W(`${p}.self_attn.q_proj.weight`), c.numHeads * hd, d, v));
      const k = n.map((v) => matVec(W(`${p}.self_attn.k_proj.weight`), c.numKvHeads * hd, d, v));
      const vv = n.map((v) => matVec(W(`${p}.self_attn.v_proj.weight`), c.numKvHeads * hd, d, v));
      const head = (vec: number[], h: number) => vec.slice(h * hd, (h + 1) * hd);
      const attnOut = x.map((_, t) => {
        const outs: number[] = [];
        for (let h = 0; h < c.numHeads; h++) {
          const kvh = Math.floor(h / g);
          const qh = rope(head(q[t]!, h), pos[t]!, inv);
          const keys: number[] = [];
          for (let u = 0; u <= t; u++) if (m[u] === 1) keys.push(u);
          const sc = keys.map((u) => {
            const kh = rope(head(k[u]!, kvh), pos[u]!, inv);
            return qh.reduce((a, v, i) => a + v * kh[i]!, 0) / Math.sqrt(hd);
          });
          const mx = Math.max(...sc);
          const ex = sc.map((s) => Math.exp(s - mx));
          const z = ex.reduce((a, v) => a + v, 0);
          const o = new Array<number>(hd).fill(0);
          keys.forEach((u, j) => {
            const vh = head(vv[u]!, kvh);
            for (let i = 0; i < hd; i++) o[i] += (ex[j]! / z) * vh[i]!;
          });
          outs.push(...(keys.length ? o : new Array<number>(hd).fill(NaN)));
        }
        return matVec(W(`${p}.self_attn.o_proj.weight`), d, c.numHeads * hd, outs);
      });
      x = x.map((v, t) => v.map((a, i) => a + attnOut[t]![i]!));
      x = x.map((v) => {
        const n2 = rms(v, W(`${p}.post_attention_layernorm.weight`), c.rmsNormEps);
        const gt = matVec(W(`${p}.mlp.gate_proj.weight`), I, d, n2);
        const up = matVec(W(`${p}.mlp.up_proj.weight`), I, d, n2);
        const act = gt.map((a, i) => (a / (1 + Math.exp(-a))) * up[i]!);
        const dn = matVec(W(`${p}.mlp.down_proj.weight`), d, I, act);
        return v.map((a, i) => a + dn[i]!);
      });
    }
    const headW = W(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
    return x.map((v) => matVec(headW, c.vocabSize, d, rms(v, W('model.norm.weight'), c.rmsNormEps)));
  });
}

/** log softmax of a row, float64. */
export function logSoftmax(row: number[]): number[] {
  const mx = Math.max(...row);
  const lz = mx + Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0));
  return row.map((v) => v - lz);
}

/** max |a - b| / max(1e-6, max |b|) over the entries where `keep` holds. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, keep?: (i: number) => boolean): number {
  let num = 0;
  let den = 1e-6;
  for (let i = 0; i < b.length; i++) {
    if (keep && !keep(i)) continue;
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

/** LoRA factors in float64, keyed by the Hugging Face name of the adapted weight. */
export type LoraFactors = Record<string, { A: Float64Array; B: Float64Array; r: number; out: number; inp: number }>;

/** Reads an adapter's A and B (PEFT keys) into float64 factors keyed by base weight name. */
export function loraFactors(variables: Record<string, tf.Tensor>): LoraFactors {
  const f: LoraFactors = {};
  for (const [key, v] of Object.entries(variables)) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (!m) throw new Error(`unexpected LoRA key ${key}`);
    const base = `${m[1]}.weight`;
    const e = (f[base] ??= { A: new Float64Array(0), B: new Float64Array(0), r: 0, out: 0, inp: 0 });
    const data = Float64Array.from(v.dataSync());
    if (m[2] === 'A') {
      e.A = data;
      [e.r, e.inp] = v.shape as [number, number];
    } else {
      e.B = data;
      e.out = v.shape[0]!;
    }
  }
  return f;
}

/** W + scale · B A for every adapted weight, float64 (the reference's view of a LoRA model). */
export function mergedWeights(w: Weights, f: LoraFactors, scale: number): Record<string, Float64Array> {
  const out: Record<string, Float64Array> = {};
  for (const [name, { A, B, r, out: O, inp: I }] of Object.entries(f)) {
    const W = Float64Array.from(w[name]!.data);
    for (let o = 0; o < O; o++) {
      for (let i = 0; i < I; i++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += B[o * r + k]! * A[k * I + i]!;
        W[o * I + i] += scale * s;
      }
    }
    out[name] = W;
  }
  return out;
}

/** Reference per-token log-probs [B][T-1] of ids[:,1:], zero where targetsMask (aligned with targets) is 0. */
export function referenceLogProbs(
  c: LlamaConfig,
  w: Weights,
  ids: number[][],
  mask: number[][],
  targetsMask: number[][],
  overrides: Record<string, Float64Array> = {},
): number[][] {
  const logits = referenceLogits(c, w, ids, mask, overrides);
  return ids.map((row, b) =>
    row.slice(1).map((tok, t) => (targetsMask[b]![t] ? logSoftmax(logits[b]![t]!)[tok]! : 0)),
  );
}

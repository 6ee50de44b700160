/**
 * Rotary position embedding (SPEC §2), rotate-half layout (Hugging Face's): dimension i of a head
 * pairs with i + hd/2 and turns by the angle p · inv_freq[i] at position p,
 *
 *   inv_freq[i] = theta^(-2i / hd),   i < hd/2
 *   rope(x)     = x · cos + rotate_half(x) · sin,   rotate_half([x1, x2]) = [-x2, x1].
 *
 * Rotary scaling (config.json's rope_scaling; as transformers' modeling_rope_utils computes it):
 *
 *   linear:  inv_freq[i] / factor
 *   llama3:  with L = original_max_position_embeddings and wavelength λ_i = 2π / inv_freq[i],
 *              λ_i < L / high_freq_factor            → inv_freq[i]            (high frequencies kept)
 *              λ_i > L / low_freq_factor             → inv_freq[i] / factor   (low ones slowed)
 *              otherwise, s = (L / λ_i - low_freq_factor) / (high_freq_factor - low_freq_factor),
 *                                                    → (1 - s) · inv_freq[i] / factor + s · inv_freq[i]
 *   (both leave the attention scale at 1/sqrt(hd); `dynamic`, `yarn`, `longrope` are refused in config.ts)
 *
 * ropeInverseFrequencies() is the one place the frequencies are made (the reference forward and
 * the fast paths both read it); RopeTables keeps cos / sin rows laid out for the fast paths.
 */
import { type LlamaConfig, headDim } from './config.js';

/** inv_freq[i] for i < hd/2, in float64, scaled as the config says. */
export function ropeInverseFrequencies(c: LlamaConfig): Float64Array {
  const hd = headDim(c);
  const out = new Float64Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) out[i] = Math.pow(c.ropeTheta, (-2 * i) / hd);
  const s = c.ropeScaling;
  if (s?.ropeType === 'linear') {
    for (let i = 0; i < out.length; i++) out[i] = out[i]! / s.factor;
  } else if (s?.ropeType === 'llama3') {
    const L = s.originalMaxPositionEmbeddings;
    const lowWavelen = L / s.lowFreqFactor;
    const highWavelen = L / s.highFreqFactor;
    for (let i = 0; i < out.length; i++) {
      const f = out[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        out[i] = f / s.factor;
        continue;
      }
      const smooth = (L / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      out[i] = (1 - smooth) * (f / s.factor) + smooth * f;
    }
  }
  return out;
}

/** cos and sin of p · inv_freq[i] for positions p < n: [n, hd/2] row-major, computed in float64. */
export function ropeAngles(c: LlamaConfig, n: number): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInverseFrequencies(c);
  const half = inv.length;
  const cos = new Float32Array(n * half);
  const sin = new Float32Array(n * half);
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * inv[i]!;
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * cos and sign-folded sin per position for the fast paths, grown by doubling and kept in JS
 * memory. Rows are repeated for every head ([len, heads * hd]): the rows at a forward's positions
 * are copied out into tensors of the projections' shape, so they multiply without broadcasting
 * (a broadcast multiply costs ~0.3 ms of fixed overhead on the wasm backend, a same-shape one
 * microseconds). The q tables are pre-multiplied by 1/sqrt(hd), so the attention scores need no
 * separate scaling. With the halves of x swapped, rope(x) = x · cos + swap(x) · sin where the
 * sin table holds -sin in the first half (the sign of rotate_half).
 */
export class RopeTables {
  len = 0;
  cosK = new Float32Array(0);
  sinK = new Float32Array(0);
  cosQ = new Float32Array(0);
  sinQ = new Float32Array(0);
  /** The same for decode(): per position one row laid out like its fused projection (per kv
   *  head: its g query heads, its key, its value; value columns cos 1, sin 0). Built on demand. */
  private dec: { cos: Float32Array; sin: Float32Array; width: number } | null = null;

  constructor(private readonly config: LlamaConfig) {}

  /** Makes sure positions below n are in the tables. */
  upTo(n: number): this {
    if (this.len >= n) return this;
    let len = Math.max(64, this.len);
    while (len < n) len *= 2;
    const hd = headDim(this.config);
    const half = hd / 2;
    const scale = 1 / Math.sqrt(hd);
    const angles = ropeAngles(this.config, len);
    const cos = new Float32Array(len * hd);
    const sin = new Float32Array(len * hd);
    for (let p = 0; p < len; p++) {
      for (let i = 0; i < half; i++) {
        const [cs, sn] = [angles.cos[p * half + i]!, angles.sin[p * half + i]!];
        cos[p * hd + i] = cs;
        cos[p * hd + i + half] = cs;
        sin[p * hd + i] = -sn;
        sin[p * hd + i + half] = sn;
      }
    }
    const { numHeads: H, numKvHeads: Hkv } = this.config;
    const perHead = (a: Float32Array, heads: number, mult: number) => {
      const out = new Float32Array(len * heads * hd);
      for (let p = 0; p < len; p++) {
        for (let h = 0; h < heads; h++) {
          for (let i = 0; i < hd; i++) out[(p * heads + h) * hd + i] = a[p * hd + i]! * mult;
        }
      }
      return out;
    };
    this.len = len;
    this.cosK = perHead(cos, Hkv, 1);
    this.sinK = perHead(sin, Hkv, 1);
    this.cosQ = perHead(cos, H, scale);
    this.sinQ = perHead(sin, H, scale);
    this.dec = null;
    return this;
  }

  /** Rows for decode(): per position, cos / sin laid out like a decoding layer's qkv product. */
  decodeRows(n: number): { cos: Float32Array; sin: Float32Array; width: number } {
    this.upTo(n);
    if (this.dec) return this.dec;
    const { numHeads: H, numKvHeads: Hkv } = this.config;
    const hd = headDim(this.config);
    const g = H / Hkv;
    const width = Hkv * (g + 2) * hd;
    const cos = new Float32Array(this.len * width);
    const sin = new Float32Array(this.len * width);
    for (let p = 0; p < this.len; p++) {
      for (let j = 0; j < Hkv; j++) {
        const at = p * width + j * (g + 2) * hd;
        const q = (p * H + j * g) * hd;
        cos.set(this.cosQ.subarray(q, q + g * hd), at);
        sin.set(this.sinQ.subarray(q, q + g * hd), at);
        const k = (p * Hkv + j) * hd;
        cos.set(this.cosK.subarray(k, k + hd), at + g * hd);
        sin.set(this.sinK.subarray(k, k + hd), at + g * hd);
        cos.fill(1, at + (g + 1) * hd, at + (g + 2) * hd); // values pass through (sin stays 0)
      }
    }
    this.dec = { cos, sin, width };
    return this.dec;
  }
}

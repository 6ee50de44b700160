/**
 * Keys and values of every layer for the positions fed so far, so that decoding a token costs one
 * position's work. step() grows them by concatenation (the model replaces and disposes them);
 * decode() on a backend with the DecodeAttention kernel (compute/ops.ts) moves them once into
 * preallocated [B, Hkv, maxLen, hd] buffers (`slabs`) that each step writes one position of, in
 * place.
 */
import * as tf from '@tensorflow/tfjs';

export class KVCache {
  /** Positions fed so far (including pads). */
  length = 0;
  keys: (tf.Tensor4D | null)[];
  values: (tf.Tensor4D | null)[];
  /** Per layer, the preallocated caches of the native decoding path (positions < length valid). */
  slabs: { k: tf.Tensor4D; v: tf.Tensor4D }[] | null = null;
  constructor(
    readonly batch: number,
    readonly maxLen: number,
    numLayers: number,
  ) {
    this.keys = new Array<tf.Tensor4D | null>(numLayers).fill(null);
    this.values = new Array<tf.Tensor4D | null>(numLayers).fill(null);
  }
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    for (const s of this.slabs ?? []) tf.dispose([s.k, s.v]);
    this.slabs = null;
    this.keys.fill(null);
    this.values.fill(null);
    this.length = 0;
  }

  /** Back to per-layer tensors of the valid positions (for step() after native decoding). */
  unslab(): void {
    if (!this.slabs) return;
    const n = this.length;
    this.slabs.forEach((s, i) => {
      const [B, Hkv, , hd] = s.k.shape;
      this.keys[i] = n > 0 ? (tf.slice(s.k, [0, 0, 0, 0], [B, Hkv, n, hd]) as tf.Tensor4D) : null;
      this.values[i] = n > 0 ? (tf.slice(s.v, [0, 0, 0, 0], [B, Hkv, n, hd]) as tf.Tensor4D) : null;
      tf.dispose([s.k, s.v]);
    });
    this.slabs = null;
  }

  /** Into preallocated buffers for the native decoding path (no-op when already there). */
  toSlabs(Hkv: number, hd: number): { k: tf.Tensor4D; v: tf.Tensor4D }[] {
    if (this.slabs) return this.slabs;
    const slabs = this.keys.map((k, i) => ({
      k: newSlab(k, this.batch, Hkv, this.maxLen, hd),
      v: newSlab(this.values[i] ?? null, this.batch, Hkv, this.maxLen, hd),
    }));
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.slabs = slabs;
    return slabs;
  }

  /** Installs a step's keys / values (disposing the ones they replace); `total` positions now. */
  commit(newK: tf.Tensor4D[], newV: tf.Tensor4D[], total: number): void {
    for (let i = 0; i < newK.length; i++) {
      const [ok, ov] = [this.keys[i], this.values[i]];
      this.keys[i] = newK[i]!;
      this.values[i] = newV[i]!;
      if (ok && ok !== newK[i]) ok.dispose();
      if (ov && ov !== newV[i]) ov.dispose();
    }
    this.length = total;
  }
}

/**
 * A zero cache [B, Hkv, maxLen, hd] holding `prefix` ([B, Hkv, past, hd], may be null) in front.
 * DecodeAttention writes into it in place, so it must own its memory: zeros, or a concat of two
 * non-empty parts, always make a new buffer (never a reshape or clone of another tensor).
 */
function newSlab(prefix: tf.Tensor4D | null, B: number, Hkv: number, maxLen: number, hd: number): tf.Tensor4D {
  return tf.tidy(() => {
    const past = prefix ? prefix.shape[2] : 0;
    const zeros = tf.zeros([B, Hkv, maxLen - past, hd]) as tf.Tensor4D;
    return prefix && past > 0 ? (tf.concat([prefix, zeros], 2) as tf.Tensor4D) : zeros;
  });
}

/**
 * The decoding fast path behind LlamaModel.decode(): one new token per row after a KVCache's
 * positions, the same computation as reference.ts within float32 rounding (tested against it and
 * against a float64 reference), in about 35 kernel calls per layer instead of ~55:
 *
 * - it runs on decodingWeights(): per layer q, k, v stacked into one [d, Hkv (g + 2) hd] matrix
 *   (one product), every matrix pre-transposed to [in, out], the RMSNorm weights folded into the
 *   next product (diag(w) then W is W·diag(w)), an enabled LoRA adapter merged (W + s·BA from
 *   LoraAdapter.deltaWeight); rebuilt whenever a weight or adapter factor changes;
 * - positions, rotary rows and the mask come from JS arrays;
 * - attention is qrlhf's DecodeAttention op (compute/ops.ts) where the backend has a kernel for
 *   it (wasm with the native addon: caches preallocated for the whole generation and written in
 *   place), else tfjs ops on caches grown by concatenation.
 * No gradient flows through it (use step() or hidden() for that).
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import { decodeAttention, decodeAttentionAvailable } from '../compute/ops.js';
import { headDim } from './config.js';
import { maskLayout, rotate } from './fused.js';
import type { KVCache } from './kv-cache.js';
import { type LoraModule, loraGroup } from './lora.js';
import type { LlamaModel } from './llama.js';
import type { RopeTables } from './rope.js';

/** One layer of decodingWeights(), every matrix [in, out] (so products need no transpose). */
export interface DecodeLayer {
  /** q, k, v rows grouped per kv head (its g query heads, its key, its value), times the input
   *  norm: [d, Hkv (g + 2) hd]. (Adding each column's rotate-half partner to the product would
   *  spare the swap's split and concat but doubles the bytes read per token.) */
  qkv: tf.Tensor2D;
  o: tf.Tensor2D;
  /** gate and up times the post-attention norm. */
  gate: tf.Tensor2D;
  up: tf.Tensor2D;
  down: tf.Tensor2D;
}

export interface DecodingWeights {
  layers: DecodeLayer[];
  /** The head [d, V] times the final norm. */
  head: tf.Tensor2D;
  /** [d, 1] of 1/d, the norm's epsilon. */
  meanCol: tf.Tensor2D;
  eps: tf.Scalar;
}

export class Decoder {
  private dec: (DecodingWeights & { sources: unknown[] }) | null = null;

  constructor(
    private readonly model: LlamaModel,
    private readonly rope: RopeTables,
  ) {}

  /** See LlamaModel.decode(). */
  decode(ids: number[], cache: KVCache, mask: number[][]): tf.Tensor2D {
    const c = this.model.config;
    const B = ids.length;
    const past = cache.length;
    const total = past + 1;
    if (cache.batch !== B) throw new QrlhfError(`decode: ${B} ids for a cache of batch ${cache.batch}`);
    if (total > cache.maxLen) throw new QrlhfError(`decode: ${total} positions exceed the cache's maxLen ${cache.maxLen}`);
    if (mask.length !== B) throw new QrlhfError(`decode: mask has ${mask.length} rows, expected ${B}`);
    const flat = new Float32Array(B * total);
    mask.forEach((row, b) => {
      if (row.length !== total) throw new QrlhfError(`decode: mask row ${b} has ${row.length} entries, expected ${total} (cached + new)`);
      flat.set(row, b * total);
    });
    ids.forEach((x, b) => {
      if (!Number.isInteger(x) || x < 0 || x >= c.vocabSize) throw new QrlhfError(`decode: row ${b}: token ${x} is not an id below vocab size ${c.vocabSize}`);
    });
    const dw = this.weights();
    const { numHeads: H, numKvHeads: Hkv } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    const tables = this.rope.decodeRows(total);
    const { pos, bias } = maskLayout(flat, B, 1, past, H);
    const slabs = decodeAttentionAvailable() ? cache.toSlabs(Hkv, hd) : null;
    const newK: tf.Tensor4D[] = [];
    const newV: tf.Tensor4D[] = [];
    let out: tf.Tensor2D;
    try {
      out = tf.tidy(() => {
        const rows = (table: Float32Array) => {
          const w = tables.width;
          const t = new Float32Array(B * w);
          for (let b = 0; b < B; b++) t.set(table.subarray(pos[b]! * w, (pos[b]! + 1) * w), b * w);
          return tf.tensor2d(t, [B, w]);
        };
        const [cos, sin] = [rows(tables.cos), rows(tables.sin)];
        /** The attention output [B, H hd] of layer i from its unrotated q, k, v projection. */
        let attend: (i: number, qkv: tf.Tensor2D) => tf.Tensor2D;
        if (slabs) {
          // one bias row per batch row: the mask layout repeats it for every head
          let biasRows: tf.Tensor2D | null = null;
          if (bias) {
            const r = new Float32Array(B * total);
            for (let b = 0; b < B; b++) r.set(bias.subarray(b * H * total, b * H * total + total), b * total);
            biasRows = tf.tensor2d(r, [B, total]);
          }
          const dims = { B, Hkv, g, hd, maxLen: cache.maxLen, past };
          attend = (i, qkv) => decodeAttention(qkv, cos, sin, biasRows, slabs[i]!.k, slabs[i]!.v, dims);
        } else {
          const biasT = bias ? tf.tensor4d(bias, [B, Hkv, g, total]) : null;
          attend = (i, qkv) => {
            // q, k, v grouped per kv head, rotated ([B, Hkv, g + 2, hd]; values have cos 1, sin 0).
            const y = rotate(qkv, cos, sin, hd).reshape([B, Hkv, g + 2, hd]);
            const [q, k, v] = tf.split(y, [g, 1, 1], 2) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
            const [pk, pv] = [cache.keys[i], cache.values[i]];
            const K = pk ? (tf.concat([pk, k], 2) as tf.Tensor4D) : k;
            const V = pv ? (tf.concat([pv, v], 2) as tf.Tensor4D) : v;
            newK.push(tf.keep(K));
            newV.push(tf.keep(V));
            const scores = tf.matMul(q, K, false, true);
            return tf.matMul(tf.softmax(biasT ? tf.add(scores, biasT) : scores), V).reshape([B, H * hd]) as tf.Tensor2D;
          };
        }
        // x / sqrt(mean(x²) + eps), the mean as a product; the norm's weights are folded into the
        // next product. (A [B, 1] broadcast multiply is as fast as a same-shape one here.)
        const norm = (x: tf.Tensor2D) => tf.mul(x, tf.rsqrt(tf.add(tf.matMul(tf.square(x), dw.meanCol), dw.eps))) as tf.Tensor2D;
        let h = tf.gather(this.model.weights['model.embed_tokens.weight']!, tf.tensor1d(ids, 'int32')) as tf.Tensor2D;
        for (let i = 0; i < c.numLayers; i++) {
          const L = dw.layers[i]!;
          h = tf.add(h, tf.matMul(attend(i, tf.matMul(norm(h), L.qkv) as tf.Tensor2D), L.o));
          const n2 = norm(h);
          const gate = tf.matMul(n2, L.gate);
          h = tf.add(h, tf.matMul(tf.mul(tf.mul(gate, tf.sigmoid(gate)), tf.matMul(n2, L.up)), L.down));
        }
        return tf.matMul(norm(h), dw.head) as tf.Tensor2D;
      });
    } catch (e) {
      tf.dispose([...newK, ...newV]);
      throw e;
    }
    if (slabs) cache.length = total;
    else cache.commit(newK, newV, total);
    return out;
  }

  /**
   * The weights decode() runs on, built from the variables (and the enabled LoRA adapter, merged
   * as W + (alpha/r) B A) and kept while none of them changes: every source tensor's dataId is
   * compared on each call (tfjs gives a variable a new dataId on every assign, so an optimiser
   * step on the adapter, mergeLora or loading new weights all rebuild them).
   */
  weights(): DecodingWeights {
    const sources = this.sources();
    const cur = this.dec;
    if (cur && cur.sources.length === sources.length && cur.sources.every((x, i) => x === sources[i])) return cur;
    this.dispose();
    const { config: c, weights } = this.model;
    const { hiddenSize: d, numHeads: H, numKvHeads: Hkv } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    const width = Hkv * (g + 2) * hd;
    const lora = this.model.lora?.enabled ? this.model.lora : null;
    const built = {} as DecodingWeights;
    tf.tidy(() => {
      const layers: DecodeLayer[] = [];
      for (let i = 0; i < c.numLayers; i++) {
        const eff = (m: LoraModule): tf.Tensor => {
          const W = weights[`model.layers.${i}.${loraGroup(m)}.${m}.weight`]!;
          const delta = lora ? lora.deltaWeight(i, m) : null;
          return delta ? tf.add(W, delta) : W;
        };
        const normW = (name: string) => weights[`model.layers.${i}.${name}.weight`]!.reshape([1, d]);
        // Rows per kv head j: its query heads j*g .. j*g+g-1, then its key head, then its value head.
        const qkv = tf.mul(
          tf.concat([eff('q_proj').reshape([Hkv, g, hd, d]), eff('k_proj').reshape([Hkv, 1, hd, d]), eff('v_proj').reshape([Hkv, 1, hd, d])], 1).reshape([width, d]),
          normW('input_layernorm'),
        );
        const post = normW('post_attention_layernorm');
        layers.push({
          qkv: tf.keep(tf.transpose(qkv) as tf.Tensor2D),
          o: tf.keep(tf.transpose(eff('o_proj')) as tf.Tensor2D),
          gate: tf.keep(tf.transpose(tf.mul(eff('gate_proj'), post)) as tf.Tensor2D),
          up: tf.keep(tf.transpose(tf.mul(eff('up_proj'), post)) as tf.Tensor2D),
          down: tf.keep(tf.transpose(eff('down_proj')) as tf.Tensor2D),
        });
      }
      const head = tf.keep(tf.transpose(tf.mul(this.model.headWeight(), weights['model.norm.weight']!.reshape([1, d]))) as tf.Tensor2D);
      Object.assign(built, {
        layers,
        head,
        meanCol: tf.keep(tf.fill([d, 1], 1 / d) as tf.Tensor2D),
        eps: tf.keep(tf.scalar(c.rmsNormEps)),
      });
    });
    const dec = { sources, ...built };
    this.dec = dec;
    return dec;
  }

  /** What weights() are made from: every weight's and adapter factor's dataId, the adapter, its scale. */
  private sources(): unknown[] {
    const { weights } = this.model;
    const out: unknown[] = Object.keys(weights).sort().map((k) => weights[k]!.dataId);
    const a = this.model.lora?.enabled ? this.model.lora : null;
    out.push(a, a?.scale);
    if (a) for (const k of Object.keys(a.variables).sort()) out.push(a.variables[k]!.dataId);
    return out;
  }

  /** Frees the decoding weights (they are rebuilt on the next decode). */
  dispose(): void {
    if (!this.dec) return;
    const { layers, head, meanCol, eps } = this.dec;
    for (const L of layers) tf.dispose([L.qkv, L.o, L.gate, L.up, L.down]);
    tf.dispose([head, meanCol, eps]);
    this.dec = null;
  }
}

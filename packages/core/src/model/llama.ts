/**
 * The Llama forward pass (SPEC §2), in one file meant to be read top to bottom against the paper.
 *
 *   token embedding
 *   per layer:  h += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = rmsnorm(h)
 *               h += down_proj(silu(gate_proj(n)) * up_proj(n))                        n = rmsnorm(h)
 *   final rmsnorm, LM head (the embedding itself when tied)
 *
 * Weights are tf.Variables under their Hugging Face names, linear ones stored [out, in] and applied
 * as x Wᵀ. Rotary embedding uses Hugging Face's rotate-half layout: dimension i pairs with i + d/2.
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { Rng } from '../random.js';
import { type LlamaConfig, headDim, validateConfig } from './config.js';
import { LoraAdapter, type LoraConfig, type LoraModule, loraGroup } from './lora.js';
import { decodeAttention, decodeAttentionAvailable, newDecodeCache } from '../compute/kernels/attention.js';

/** Added to an attention score to hide a key: finite, so a query that sees nothing (a left pad
 *  row) gets a uniform distribution instead of NaN, and exp() of it is exactly 0 otherwise. */
const MASKED = -1e9;

/** The shape of every weight a model of this config has, by Hugging Face name. */
export function llamaWeightShapes(c: LlamaConfig): Record<string, number[]> {
  const d = c.hiddenSize;
  const hd = headDim(c);
  const shapes: Record<string, number[]> = { 'model.embed_tokens.weight': [c.vocabSize, d] };
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    shapes[`${p}.input_layernorm.weight`] = [d];
    shapes[`${p}.self_attn.q_proj.weight`] = [c.numHeads * hd, d];
    shapes[`${p}.self_attn.k_proj.weight`] = [c.numKvHeads * hd, d];
    shapes[`${p}.self_attn.v_proj.weight`] = [c.numKvHeads * hd, d];
    shapes[`${p}.self_attn.o_proj.weight`] = [d, c.numHeads * hd];
    shapes[`${p}.post_attention_layernorm.weight`] = [d];
    shapes[`${p}.mlp.gate_proj.weight`] = [c.intermediateSize, d];
    shapes[`${p}.mlp.up_proj.weight`] = [c.intermediateSize, d];
    shapes[`${p}.mlp.down_proj.weight`] = [d, c.intermediateSize];
  }
  shapes['model.norm.weight'] = [d];
  if (!c.tieWordEmbeddings) shapes['lm_head.weight'] = [c.vocabSize, d];
  return shapes;
}

/**
 * Keys and values of every layer for the positions fed so far, so that decoding a token costs one
 * position's work. step() grows them by concatenation (the model replaces and disposes them);
 * decode() with qrlhf's native kernels moves them once into preallocated [B, Hkv, maxLen, hd]
 * buffers (`slabs`) that each step writes one position of, in place.
 */
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
      k: newDecodeCache(k, this.batch, Hkv, this.maxLen, hd),
      v: newDecodeCache(this.values[i] ?? null, this.batch, Hkv, this.maxLen, hd),
    }));
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.slabs = slabs;
    return slabs;
  }
}

interface RopeTables {
  len: number;
  /** cos and sign-folded sin per position, repeated for every head ([len, heads * hd], row-major
   *  in JS memory): the rows at a forward's positions are copied out into tensors of the
   *  projections' shape, so they multiply without broadcasting (a broadcast multiply costs ~0.3 ms
   *  of fixed overhead on the wasm backend, a same-shape one microseconds). The q tables are
   *  pre-multiplied by 1/sqrt(hd), so the attention scores need no separate scaling. */
  cosK: Float32Array;
  sinK: Float32Array;
  cosQ: Float32Array;
  sinQ: Float32Array;
  /** The same for decode(): per position one row laid out like its fused projection (per kv
   *  head: its g query heads, its key, its value; value columns cos 1, sin 0). Built on demand. */
  dec: { cos: Float32Array; sin: Float32Array; width: number } | null;
}

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

export interface ForwardOptions {
  /** [B, T] 1 for a token, 0 for a pad; default all 1. */
  mask?: tf.Tensor2D;
  /** Turns on LoRA dropout. */
  training?: boolean;
}

export class LlamaModel {
  readonly config: LlamaConfig;
  readonly weights: Record<string, tf.Variable>;
  lora: LoraAdapter | null = null;

  private rope: RopeTables | null = null;
  /** The head matrix transposed once to [d, V] (PERF-NOTES: transposing per step is costly);
   *  remade when the head variable is reassigned (its dataId changes). */
  private headT: { source: object; t: tf.Tensor2D } | null = null;
  private dec: (DecodingWeights & { sources: unknown[] }) | null = null;
  /** linears()' stacked weights by layer and modules. */
  private readonly stacked = new Map<string, { sources: object[]; t: tf.Tensor2D }>();

  private constructor(config: LlamaConfig, weights: Record<string, tf.Variable>) {
    this.config = config;
    this.weights = weights;
  }

  /** Builds a model from tensors named as in a Hugging Face checkpoint; takes ownership of them. */
  static fromTensors(config: LlamaConfig, tensors: Record<string, tf.Tensor>): LlamaModel {
    validateConfig(config);
    const shapes = llamaWeightShapes(config);
    const weights: Record<string, tf.Variable> = {};
    try {
      for (const [name, shape] of Object.entries(shapes)) {
        const t = tensors[name];
        if (!t) throw new QrlhfError(`model weights: "${name}" is missing (expected shape [${shape}])`);
        if (!tf.util.arraysEqual(t.shape, shape)) {
          throw new QrlhfError(`model weights: "${name}" has shape [${t.shape}], expected [${shape}]`);
        }
      }
      for (const name of Object.keys(tensors)) {
        // Old checkpoints store the rotary frequencies as a buffer, and some tied ones a copy of
        // the embedding as lm_head: both are recomputed / shared here.
        const harmless = name.endsWith('rotary_emb.inv_freq') || (name === 'lm_head.weight' && config.tieWordEmbeddings);
        if (!(name in shapes) && !harmless) {
          throw new QrlhfError(`model weights: unexpected tensor "${name}" for a Llama model`);
        }
      }
    } catch (e) {
      for (const t of Object.values(tensors)) t.dispose();
      throw e;
    }
    for (const [name, t] of Object.entries(tensors)) {
      if (name in shapes) {
        const f = t.dtype === 'float32' ? t : tf.cast(t, 'float32');
        // Unnamed: tfjs variable names are global, and several models may coexist.
        weights[name] = tf.variable(f, false);
        if (f !== t) f.dispose();
      }
      t.dispose();
    }
    return new LlamaModel(config, weights);
  }

  /** Random weights (normal, std 0.02, as transformers initialises; norms at 1). */
  static random(config: LlamaConfig, seed: number): LlamaModel {
    const tensors: Record<string, tf.Tensor> = {};
    let k = 0;
    for (const [name, shape] of Object.entries(llamaWeightShapes(config))) {
      k++;
      tensors[name] = name.endsWith('norm.weight')
        ? tf.ones(shape)
        : tf.randomNormal(shape, 0, 0.02, 'float32', (seed * 1000003 + k) >>> 0);
    }
    return LlamaModel.fromTensors(config, tensors);
  }

  // ---------------------------------------------------------------------------------------------
  // The forward pass

  hidden(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    return this.run(ids, opts.mask, null, opts.training ?? false);
  }

  forward(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    return tf.tidy(() => this.head(this.hidden(ids, opts)) as tf.Tensor3D);
  }

  /** Logits for hidden states [..., d] → [..., V]. */
  head(hidden: tf.Tensor): tf.Tensor {
    const { hiddenSize: d, vocabSize: V } = this.config;
    const W = this.headWeight();
    return tf.tidy(() => {
      const x = hidden.reshape([-1, d]);
      // A trainable head must stay on the gradient path; a frozen one uses the kept transpose.
      const y = W.trainable ? tf.matMul(x, W, false, true) : tf.matMul(x, this.headTransposed());
      return y.reshape([...hidden.shape.slice(0, -1), V]);
    });
  }

  /** The [V, d] matrix whose rows are the output token vectors. */
  headWeight(): tf.Variable {
    return this.weights[this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight']!;
  }

  createCache(batch: number, maxLen: number): KVCache {
    return new KVCache(batch, maxLen, this.config.numLayers);
  }

  /** Feeds ids [B, t] after the cache's positions; mask [B, pos + t] covers the whole history. */
  step(ids: tf.Tensor2D, cache: KVCache, mask: tf.Tensor2D): tf.Tensor3D {
    const h = this.run(ids, mask, cache, false);
    try {
      return this.head(h) as tf.Tensor3D;
    } finally {
      h.dispose();
    }
  }

  /**
   * One decoding step for generation: feeds one new token per row (ids[b]) after the cache's
   * positions, mask[b] covering the whole history (past + 1 entries, 1 token, 0 pad), and returns
   * the logits of the new position, [B, V]. Same result as step() within float32 rounding, in
   * about 35 kernel calls per layer instead of ~55: it runs on decodingWeights() (q, k, v from one
   * product, norms' weights folded into the next product, an enabled LoRA merged), and takes
   * positions, RoPE rows and the mask from JS arrays. No gradient flows through it (use step() or hidden() for that).
   */
  decode(ids: number[], cache: KVCache, mask: number[][]): tf.Tensor2D {
    const c = this.config;
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
    const dw = this.decodingWeights();
    const { numHeads: H, numKvHeads: Hkv } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    const tables = this.decodeRope(this.ropeTables(total));
    const { pos, bias } = this.maskLayout(flat, B, 1, past);
    // With qrlhf's native kernels the attention of a layer is one call on caches preallocated for
    // the whole generation and written in place (attention.ts), so no step copies them.
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
        let h = tf.gather(this.weights['model.embed_tokens.weight']!, tf.tensor1d(ids, 'int32')) as tf.Tensor2D;
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
    else commitCache(cache, newK, newV, total);
    return out;
  }

  /**
   * The shared body of hidden() and step(): ids [B, T] at positions past..past+T-1 of the sequence
   * (past = cache length, 0 without a cache). Returns final-norm hidden states [B, T, d].
   */
  private run(ids: tf.Tensor2D, mask: tf.Tensor2D | undefined, cache: KVCache | null, training: boolean): tf.Tensor3D {
    const c = this.config;
    const [B, T] = ids.shape;
    const past = cache?.length ?? 0;
    const total = past + T;
    if (mask && (mask.shape[0] !== B || mask.shape[1] !== total)) {
      throw new QrlhfError(`mask: expected shape [${B}, ${total}] (batch, cached + new positions), got [${mask.shape}]`);
    }
    if (cache) {
      if (cache.batch !== B) throw new QrlhfError(`step: ids have batch ${B}, the cache ${cache.batch}`);
      if (total > cache.maxLen) throw new QrlhfError(`step: ${total} positions exceed the cache's maxLen ${cache.maxLen}`);
      cache.unslab();
    }
    const rope = this.ropeTables(total);
    const newK: tf.Tensor4D[] = [];
    const newV: tf.Tensor4D[] = [];

    let out: tf.Tensor3D;
    try {
      out = this.body(ids, mask, cache, training, rope, newK, newV);
    } catch (e) {
      // The cache stays as it was; the keys/values kept for it so far are released.
      tf.dispose([...newK, ...newV]);
      throw e;
    }
    if (cache) commitCache(cache, newK, newV, total);
    return out;
  }

  /** The layers themselves, for run(): new keys/values are pushed (kept) onto newK / newV. */
  private body(
    ids: tf.Tensor2D,
    mask: tf.Tensor2D | undefined,
    cache: KVCache | null,
    training: boolean,
    rope: RopeTables,
    newK: tf.Tensor4D[],
    newV: tf.Tensor4D[],
  ): tf.Tensor3D {
    const c = this.config;
    const [B, T] = ids.shape;
    const past = cache?.length ?? 0;
    const total = past + T;
    const { numHeads: H, numKvHeads: Hkv, hiddenSize: d } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    // Positions, the rope rows at them and the attention mask are worked out in JS from the mask's
    // values (a few small arrays): no cumsum / gather / tile kernels per forward.
    const { pos, bias } = this.maskLayout(mask ? mask.dataSync() : null, B, T, past);
    return tf.tidy(() => {
      const rows = (table: Float32Array) => {
        const w = table.length / rope.len;
        const out = new Float32Array(B * T * w);
        for (let r = 0; r < B * T; r++) out.set(table.subarray(pos[r]! * w, (pos[r]! + 1) * w), r * w);
        return tf.tensor2d(out, [B * T, w]);
      };
      const [cosQ, sinQ, cosK, sinK] = [rope.cosQ, rope.sinQ, rope.cosK, rope.sinK].map(rows);
      // Laid out once like the scores of every layer ([B, Hkv, g*T, total], see below), so each
      // layer adds it without broadcasting; null when nothing is hidden (one new token, no pads).
      const biasT = bias ? tf.tensor4d(bias, [B, Hkv, g * T, total]) : null;

      const idsInt = ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32');
      let h: tf.Tensor = tf.gather(this.weights['model.embed_tokens.weight']!, idsInt.reshape([-1]));

      for (let i = 0; i < c.numLayers; i++) {
        const w = (name: string) => this.weights[`model.layers.${i}.${name}.weight`]!;

        // Attention. Query heads are grouped by key/value head (query head h uses kv head h/g), so
        // folding the group into the time axis lets one batched product serve a whole group
        // without copying keys g times.
        const n = rmsNorm(h, w('input_layernorm'), c.rmsNormEps);
        const [qp, kp, vp] = this.linears(n, i, ['q_proj', 'k_proj', 'v_proj'], training);
        const q = rotate(qp!, cosQ!, sinQ!, hd).reshape([B, T, H, hd]);
        const k = rotate(kp!, cosK!, sinK!, hd).reshape([B, T, Hkv, hd]);
        const v = vp!.reshape([B, T, Hkv, hd]);
        let kh = tf.transpose(k, [0, 2, 1, 3]) as tf.Tensor4D;
        let vh = tf.transpose(v, [0, 2, 1, 3]) as tf.Tensor4D;
        if (cache) {
          const pk = cache.keys[i];
          const pv = cache.values[i];
          if (pk && pv) {
            kh = tf.concat([pk, kh], 2);
            vh = tf.concat([pv, vh], 2);
          }
          newK.push(tf.keep(kh));
          newV.push(tf.keep(vh));
        }
        const qh = tf.transpose(q, [0, 2, 1, 3]).reshape([B, Hkv, g * T, hd]);
        const scores = tf.matMul(qh, kh, false, true);
        const probs = tf.softmax(biasT ? tf.add(scores, biasT) : scores);
        const att = tf.matMul(probs, vh).reshape([B, H, T, hd]);
        const merged = tf.transpose(att, [0, 2, 1, 3]).reshape([B * T, d]);
        h = tf.add(h, this.linear(merged, i, 'o_proj', training));

        // SwiGLU feed-forward.
        const n2 = rmsNorm(h, w('post_attention_layernorm'), c.rmsNormEps);
        const [gate, up] = this.linears(n2, i, ['gate_proj', 'up_proj'], training) as [tf.Tensor, tf.Tensor];
        const act = tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
        h = tf.add(h, this.linear(act, i, 'down_proj', training));
      }
      return rmsNorm(h, this.weights['model.norm.weight']!, c.rmsNormEps).reshape([B, T, d]) as tf.Tensor3D;
    });
  }

  /**
   * linear() for several modules that read the same x, as one product on a kept concatenation
   * [in, Σ out] of their (frozen) weights, split afterwards (a split's gradient is one concat).
   * The LoRA updates of the covered modules join as one more pair of products: their middles side
   * by side, times a block matrix of their B's. Trainable base weights go through linear().
   */
  private linears(x: tf.Tensor, layer: number, modules: LoraModule[], training: boolean): tf.Tensor[] {
    const Ws = modules.map((m) => this.weights[`model.layers.${layer}.${loraGroup(m)}.${m}.weight`]!);
    if (Ws.some((W) => W.trainable)) return modules.map((m) => this.linear(x, layer, m, training));
    const outs = Ws.map((W) => W.shape[0]!);
    let y = tf.matMul(x, this.concatTransposed(`${layer}:${modules.join(',')}`, Ws));
    const lora = this.lora?.enabled ? this.lora : null;
    const covered = lora ? modules.filter((m) => lora.pair(layer, m)) : [];
    if (lora && covered.length > 0) {
      const r = lora.config.r;
      const R = r * covered.length;
      const mid = lora.dropsOut(training)
        ? tf.concat(covered.map((m) => lora.middle(layer, m, x, training)!), 1)
        : tf.mul(tf.matMul(x, tf.concat(covered.map((m) => lora.pair(layer, m)!.A), 0), false, true), lora.scale);
      // The rows of module m: its B in its own r columns of the middle, zeros elsewhere.
      let at = 0;
      const rows = modules.map((m, j) => {
        const p = lora.pair(layer, m);
        if (!p) return tf.zeros([outs[j]!, R]);
        const parts: tf.Tensor[] = [];
        if (at > 0) parts.push(tf.zeros([outs[j]!, at]));
        parts.push(p.B);
        if (at + r < R) parts.push(tf.zeros([outs[j]!, R - at - r]));
        at += r;
        return parts.length > 1 ? tf.concat(parts, 1) : p.B;
      });
      y = tf.add(y, tf.matMul(mid, rows.length > 1 ? tf.concat(rows, 0) : rows[0]!, false, true));
    }
    return modules.length > 1 ? tf.split(y, outs, 1) : [y];
  }

  /** The weights Ws [out_i, in] stacked and transposed to [in, Σ out_i], kept until one changes. */
  private concatTransposed(key: string, Ws: tf.Variable[]): tf.Tensor2D {
    const sources = Ws.map((W) => W.dataId);
    const cur = this.stacked.get(key);
    if (cur && cur.sources.every((x, i) => x === sources[i])) return cur.t;
    cur?.t.dispose();
    const t = tf.keep(tf.tidy(() => tf.transpose(tf.concat(Ws, 0)) as tf.Tensor2D));
    this.stacked.set(key, { sources, t });
    return t;
  }

  /** x Wᵀ for a layer's linear module, plus the LoRA update when an enabled adapter covers it. */
  private linear(x: tf.Tensor, layer: number, module: LoraModule, training: boolean): tf.Tensor {
    const W = this.weights[`model.layers.${layer}.${loraGroup(module)}.${module}.weight`]!;
    const y = tf.matMul(x, W, false, true);
    const delta = this.lora?.enabled ? this.lora.delta(layer, module, x, training) : null;
    return delta ? tf.add(y, delta) : y;
  }

  /**
   * From the mask's values ([B, past + T] row-major; null means all ones): the position of every
   * new token (the real tokens before it, so left pads do not shift a prompt; a pad sits at 0), and
   * the additive attention bias laid out like the scores, [B, Hkv, g*T, past + T]: 0 where query j
   * may see key s (s <= past + j and s is not a pad), MASKED elsewhere; null when nothing is hidden.
   */
  private maskLayout(m: ArrayLike<number> | null, B: number, T: number, past: number): { pos: Int32Array; bias: Float32Array | null } {
    const total = past + T;
    const pos = new Int32Array(B * T);
    let anyPad = false;
    for (let b = 0; b < B; b++) {
      let count = 0;
      for (let s = 0; s < total; s++) {
        if (!m || m[b * total + s] !== 0) count++;
        else anyPad = true;
        if (s >= past) pos[b * T + s - past] = Math.max(count - 1, 0);
      }
    }
    if (T === 1 && !anyPad) return { pos, bias: null };
    const H = this.config.numHeads;
    const size = T * total;
    const bias = new Float32Array(B * H * size);
    for (let b = 0; b < B; b++) {
      const at = b * H * size;
      for (let j = 0; j < T; j++) {
        for (let s = 0; s < total; s++) {
          if (s > past + j || (m && m[b * total + s] === 0)) bias[at + j * total + s] = MASKED;
        }
      }
      for (let h = 1; h < H; h++) bias.copyWithin(at + h * size, at, at + size);
    }
    return { pos, bias };
  }

  /** cos / sin tables for positions below n, grown by doubling and kept outside any tidy scope. */
  private ropeTables(n: number): RopeTables {
    if (this.rope && this.rope.len >= n) return this.rope;
    let len = Math.max(64, this.rope?.len ?? 0);
    while (len < n) len *= 2;
    const hd = headDim(this.config);
    const half = hd / 2;
    const scale = 1 / Math.sqrt(hd);
    const cos = new Float32Array(len * hd);
    const sin = new Float32Array(len * hd);
    for (let p = 0; p < len; p++) {
      for (let i = 0; i < half; i++) {
        const angle = p * Math.pow(this.config.ropeTheta, (-2 * i) / hd);
        const [cs, sn] = [Math.cos(angle), Math.sin(angle)];
        cos[p * hd + i] = cs;
        cos[p * hd + i + half] = cs;
        // rotate_half(x) = [-x2, x1]; with the halves swapped, the sign lives in the table.
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
    this.rope = {
      len,
      cosK: perHead(cos, Hkv, 1),
      sinK: perHead(sin, Hkv, 1),
      cosQ: perHead(cos, H, scale),
      sinQ: perHead(sin, H, scale),
      dec: null,
    };
    return this.rope;
  }

  /**
   * The weights decode() runs on, built from the variables (and the enabled LoRA adapter, merged
   * as W + (alpha/r) B A) and kept while none of them changes: every source tensor's dataId is
   * compared on each call (tfjs gives a variable a new dataId on every assign, so an optimiser
   * step on the adapter, mergeLora or loading new weights all rebuild them).
   */
  decodingWeights(): DecodingWeights {
    const sources = this.decodingSources();
    const cur = this.dec;
    if (cur && cur.sources.length === sources.length && cur.sources.every((x, i) => x === sources[i])) return cur;
    this.disposeDecoding();
    const c = this.config;
    const { hiddenSize: d, numHeads: H, numKvHeads: Hkv } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    const width = Hkv * (g + 2) * hd;
    const lora = this.lora?.enabled ? this.lora : null;
    const pairs = new Map((lora?.modules() ?? []).map((p) => [`${p.layer}.${p.module}`, p]));
    const built = {} as DecodingWeights;
    tf.tidy(() => {
      const layers: DecodeLayer[] = [];
      for (let i = 0; i < c.numLayers; i++) {
        const eff = (m: LoraModule): tf.Tensor => {
          const W = this.weights[`model.layers.${i}.${loraGroup(m)}.${m}.weight`]!;
          const p = pairs.get(`${i}.${m}`);
          return p ? tf.add(W, tf.mul(tf.matMul(p.B, p.A), lora!.scale)) : W;
        };
        const normW = (name: string) => this.weights[`model.layers.${i}.${name}.weight`]!.reshape([1, d]);
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
      const head = tf.keep(tf.transpose(tf.mul(this.headWeight(), this.weights['model.norm.weight']!.reshape([1, d]))) as tf.Tensor2D);
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

  /** What decodingWeights() are made from: every weight's and adapter factor's dataId, the adapter, its scale. */
  private decodingSources(): unknown[] {
    const out: unknown[] = Object.keys(this.weights).sort().map((k) => this.weights[k]!.dataId);
    const a = this.lora?.enabled ? this.lora : null;
    out.push(a, a?.scale);
    if (a) for (const k of Object.keys(a.variables).sort()) out.push(a.variables[k]!.dataId);
    return out;
  }

  /** Frees decodingWeights() (they are rebuilt on the next decode). */
  disposeDecoding(): void {
    if (!this.dec) return;
    const { layers, head, meanCol, eps } = this.dec;
    for (const L of layers) tf.dispose([L.qkv, L.o, L.gate, L.up, L.down]);
    tf.dispose([head, meanCol, eps]);
    this.dec = null;
  }

  /** RoPE rows for decode(): per position, cos / sin laid out like a decoding layer's qkv product. */
  private decodeRope(rope: RopeTables): NonNullable<RopeTables['dec']> {
    if (rope.dec) return rope.dec;
    const { numHeads: H, numKvHeads: Hkv } = this.config;
    const hd = headDim(this.config);
    const g = H / Hkv;
    const width = Hkv * (g + 2) * hd;
    const cos = new Float32Array(rope.len * width);
    const sin = new Float32Array(rope.len * width);
    for (let p = 0; p < rope.len; p++) {
      for (let j = 0; j < Hkv; j++) {
        const at = p * width + j * (g + 2) * hd;
        const q = (p * H + j * g) * hd;
        cos.set(rope.cosQ.subarray(q, q + g * hd), at);
        sin.set(rope.sinQ.subarray(q, q + g * hd), at);
        const k = (p * Hkv + j) * hd;
        cos.set(rope.cosK.subarray(k, k + hd), at + g * hd);
        sin.set(rope.sinK.subarray(k, k + hd), at + g * hd);
        cos.fill(1, at + (g + 1) * hd, at + (g + 2) * hd); // values pass through (sin stays 0)
      }
    }
    rope.dec = { cos, sin, width };
    return rope.dec;
  }

  private headTransposed(): tf.Tensor2D {
    const W = this.headWeight();
    if (this.headT?.source !== W.dataId) {
      this.headT?.t.dispose();
      this.headT = { source: W.dataId, t: tf.keep(tf.tidy(() => tf.transpose(W) as tf.Tensor2D)) };
    }
    return this.headT.t;
  }

  // ---------------------------------------------------------------------------------------------
  // LoRA (SPEC §3); the adapter itself lives in lora.ts.

  /** Attaches a fresh adapter (replacing any previous one, which is disposed). */
  addLora(cfg: LoraConfig, rng: Rng): LoraAdapter {
    const fresh = LoraAdapter.create(this, cfg, rng);
    this.lora?.dispose();
    this.lora = fresh;
    return fresh;
  }

  /** W += (alpha / r) B A for every adapted layer, then drops the adapter. */
  mergeLora(): void {
    const a = this.lora;
    if (!a) return;
    for (const { layer, module, A, B } of a.modules()) {
      const W = this.weights[`model.layers.${layer}.${loraGroup(module)}.${module}.weight`]!;
      tf.tidy(() => W.assign(tf.add(W, tf.mul(tf.matMul(B, A), a.scale))));
    }
    a.dispose();
    this.lora = null;
  }

  dispose(): void {
    this.lora?.dispose();
    this.lora = null;
    for (const v of Object.values(this.weights)) v.dispose();
    this.rope = null;
    this.disposeDecoding();
    for (const { t } of this.stacked.values()) t.dispose();
    this.stacked.clear();
    this.headT?.t.dispose();
    this.headT = null;
  }
}

/**
 * RMSNorm over the last axis of x [N, d]: x / sqrt(mean(x²) + eps) · w. The row factors times
 * the weights are formed as one outer product [N, 1] x [1, d], so the final multiply has equal
 * shapes (no broadcast: see RopeTables).
 */
function rmsNorm(x: tf.Tensor, w: tf.Tensor, eps: number): tf.Tensor {
  const inv = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps));
  return tf.mul(x, tf.matMul(inv, w.reshape([1, -1])));
}

/**
 * Rotary embedding, rotate-half layout, on a projection x [N, heads * hd] with per-head tables of
 * the same shape: x·cos + swap_halves(x)·sin, the sign of rotate-half living in the sin table. The
 * halves of every head are swapped with one split and one concat over a [N·heads, hd] view (a
 * Reverse would do it in one kernel, but tfjs's wasm Reverse is ~30 ns per element).
 */
function rotate(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, hd: number): tf.Tensor {
  const [N, width] = x.shape as [number, number];
  const [x1, x2] = tf.split(x.reshape([N * (width / hd), hd]), 2, 1);
  const swapped = tf.concat([x2!, x1!], 1).reshape([N, width]);
  return tf.add(tf.mul(x, cos), tf.mul(swapped, sin));
}

/** Installs a step's keys / values in the cache (disposing the ones they replace). */
function commitCache(cache: KVCache, newK: tf.Tensor4D[], newV: tf.Tensor4D[], total: number): void {
  for (let i = 0; i < newK.length; i++) {
    const [ok, ov] = [cache.keys[i], cache.values[i]];
    cache.keys[i] = newK[i]!;
    cache.values[i] = newV[i]!;
    if (ok && ok !== newK[i]) ok.dispose();
    if (ov && ov !== newV[i]) ov.dispose();
  }
  cache.length = total;
}

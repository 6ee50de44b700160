/**
 * The fast forward behind LlamaModel.hidden() and step(): the same computation as reference.ts
 * (tested equal to it and to a float64 reference), arranged for speed on the wasm backend:
 *
 * - fused projections: modules that read the same input (q, k, v; gate, up) run as one product on
 *   a kept, pre-transposed concatenation of their frozen weights, split afterwards; their LoRA
 *   updates join as one more pair of products (LoraAdapter.fusedDelta);
 * - positions, rotary rows and the attention mask are worked out in JS from the mask's values
 *   (RopeTables, maskLayout) and laid out like the tensors they meet, so no multiply broadcasts;
 * - grouped-query attention folds each kv head's g query heads into the time axis, so one batched
 *   product serves a whole group without copying keys g times;
 * - with a KVCache, keys and values of earlier positions are reused (step()).
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import { headDim } from './config.js';
import type { KVCache } from './kv-cache.js';
import { type LoraModule, loraGroup } from './lora.js';
import type { LlamaModel } from './llama.js';
import type { RopeTables } from './rope.js';

/** Added to an attention score to hide a key: finite, so a query that sees nothing (a left pad
 *  row) gets a uniform distribution instead of NaN, and exp() of it is exactly 0 otherwise. */
export const MASKED = -1e9;

/**
 * The mask's values on the host, for maskLayout (which works in JS, so the forward stays
 * synchronous). A GPU backend (webgpu) can read a tensor synchronously only while it still holds
 * the host copy it was made from, i.e. before a kernel took it to the GPU: masks are built from
 * JS arrays, so the first forward that sees one reads it, and the values are kept per tensor
 * (tensors are immutable) for later forwards on the same mask.
 */
const hostMasks = new WeakMap<tf.Tensor, ArrayLike<number>>();
function maskValues(mask: tf.Tensor2D): ArrayLike<number> {
  let v = hostMasks.get(mask);
  if (!v) {
    try {
      v = mask.dataSync();
    } catch (e) {
      throw new QrlhfError(
        `the attention mask cannot be read synchronously on the ${tf.getBackend()} backend (it was computed on the GPU: ` +
          `${e instanceof Error ? e.message : String(e)}); build masks from JS arrays (tf.tensor2d(values))`,
      );
    }
    hostMasks.set(mask, v);
  }
  return v;
}

export class FusedForward {
  /** linears()' stacked weights by layer and modules, kept until one of them changes. */
  private readonly stacked = new Map<string, { sources: object[]; t: tf.Tensor2D }>();

  constructor(
    private readonly model: LlamaModel,
    private readonly rope: RopeTables,
  ) {}

  /**
   * ids [B, T] at positions past..past+T-1 of the sequence (past = cache length, 0 without a
   * cache); mask [B, past + T]. Returns final-norm hidden states [B, T, d]; with a cache, its
   * keys and values grow by the T new positions.
   */
  run(ids: tf.Tensor2D, mask: tf.Tensor2D | undefined, cache: KVCache | null, training: boolean): tf.Tensor3D {
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
    this.rope.upTo(total);
    const newK: tf.Tensor4D[] = [];
    const newV: tf.Tensor4D[] = [];

    let out: tf.Tensor3D;
    try {
      out = this.body(ids, mask, cache, training, newK, newV);
    } catch (e) {
      // The cache stays as it was; the keys/values kept for it so far are released.
      tf.dispose([...newK, ...newV]);
      throw e;
    }
    if (cache) cache.commit(newK, newV, total);
    return out;
  }

  /** The layers themselves, for run(): new keys/values are pushed (kept) onto newK / newV. */
  private body(
    ids: tf.Tensor2D,
    mask: tf.Tensor2D | undefined,
    cache: KVCache | null,
    training: boolean,
    newK: tf.Tensor4D[],
    newV: tf.Tensor4D[],
  ): tf.Tensor3D {
    const { config: c, weights } = this.model;
    const rope = this.rope;
    const [B, T] = ids.shape;
    const past = cache?.length ?? 0;
    const total = past + T;
    const { numHeads: H, numKvHeads: Hkv, hiddenSize: d } = c;
    const hd = headDim(c);
    const g = H / Hkv;
    const { pos, bias } = maskLayout(mask ? maskValues(mask) : null, B, T, past, H);
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
      let h: tf.Tensor = tf.gather(weights['model.embed_tokens.weight']!, idsInt.reshape([-1]));

      for (let i = 0; i < c.numLayers; i++) {
        const w = (name: string) => weights[`model.layers.${i}.${name}.weight`]!;

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
        const merged = tf.transpose(att, [0, 2, 1, 3]).reshape([B * T, H * hd]);
        h = tf.add(h, this.linears(merged, i, ['o_proj'], training)[0]!);

        // SwiGLU feed-forward.
        const n2 = rmsNorm(h, w('post_attention_layernorm'), c.rmsNormEps);
        const [gate, up] = this.linears(n2, i, ['gate_proj', 'up_proj'], training) as [tf.Tensor, tf.Tensor];
        const act = tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
        h = tf.add(h, this.linears(act, i, ['down_proj'], training)[0]!);
      }
      return rmsNorm(h, weights['model.norm.weight']!, c.rmsNormEps).reshape([B, T, d]) as tf.Tensor3D;
    });
  }

  /**
   * x Wᵀ (+ the LoRA update) for modules that read the same x. Frozen weights run as one product
   * on a kept concatenation [in, Σ out], split afterwards (a split's gradient is one concat); a
   * single module or trainable weights run as x Wᵀ per module, on the gradient path.
   */
  private linears(x: tf.Tensor, layer: number, modules: LoraModule[], training: boolean): tf.Tensor[] {
    const Ws = modules.map((m) => this.model.weights[`model.layers.${layer}.${loraGroup(m)}.${m}.weight`]!);
    const lora = this.model.lora?.enabled ? this.model.lora : null;
    if (modules.length === 1 || Ws.some((W) => W.trainable)) {
      return modules.map((m, j) => {
        const y = tf.matMul(x, Ws[j]!, false, true);
        const delta = lora ? lora.delta(layer, m, x, training) : null;
        return delta ? tf.add(y, delta) : y;
      });
    }
    const outs = Ws.map((W) => W.shape[0]!);
    let y = tf.matMul(x, this.concatTransposed(`${layer}:${modules.join(',')}`, Ws));
    const delta = lora ? lora.fusedDelta(layer, modules, outs, x, training) : null;
    if (delta) y = tf.add(y, delta);
    return tf.split(y, outs, 1);
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

  dispose(): void {
    for (const { t } of this.stacked.values()) t.dispose();
    this.stacked.clear();
  }
}

/**
 * From the mask's values ([B, past + T] row-major; null means all ones): the position of every
 * new token (the real tokens before it, so left pads do not shift a prompt; a pad sits at 0), and
 * the additive attention bias laid out like the scores, [B, Hkv, g*T, past + T] (H = Hkv·g heads):
 * 0 where query j may see key s (s <= past + j and s is not a pad), MASKED elsewhere; null when
 * nothing is hidden.
 */
export function maskLayout(m: ArrayLike<number> | null, B: number, T: number, past: number, H: number): { pos: Int32Array; bias: Float32Array | null } {
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
 * Rotary embedding on a projection x [N, heads * hd] with per-head tables of the same shape:
 * x·cos + swap_halves(x)·sin, the sign of rotate-half living in the sin table. The halves of
 * every head are swapped with one split and one concat over a [N·heads, hd] view (a Reverse would
 * do it in one kernel, but tfjs's wasm Reverse is ~30 ns per element).
 */
export function rotate(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor, hd: number): tf.Tensor {
  const [N, width] = x.shape as [number, number];
  const [x1, x2] = tf.split(x.reshape([N * (width / hd), hd]), 2, 1);
  const swapped = tf.concat([x2!, x1!], 1).reshape([N, width]);
  return tf.add(tf.mul(x, cos), tf.mul(swapped, sin));
}

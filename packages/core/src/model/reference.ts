/**
 * The Llama forward pass (SPEC §2) written plainly, to be read against the paper: each piece is a
 * small function of tensors, read top to bottom. It is the definition the fast paths (fused.ts
 * behind hidden()/step(), decode.ts behind decode()) are tested equal to; nothing here is tuned.
 *
 *   h = embed(ids)
 *   per layer:  h = h + attention(rmsnorm(h))        attention: q, k rotated (rope.ts), causal,
 *               h = h + mlp(rmsnorm(h))               grouped kv heads, softmax(q kᵀ / sqrt(hd)) v
 *   logits = rmsnorm(h) · Wₕᵀ                        Wₕ = the embedding itself when tied
 *
 * Linear weights W are [out, in] under their Hugging Face names and applied as x Wᵀ; an enabled
 * LoRA adapter adds its update (lora.ts). Left pads: a token's position counts only the real
 * tokens before it, and no query attends to a pad.
 */
import * as tf from '@tensorflow/tfjs';
import { headDim } from './config.js';
import { type LoraModule, loraGroup } from './lora.js';
import { ropeAngles } from './rope.js';
import type { LlamaModel } from './llama.js';

/** RMSNorm over the last axis: x / sqrt(mean(x²) + eps) · w. */
export function rmsNorm(x: tf.Tensor, w: tf.Tensor, eps: number): tf.Tensor {
  return tf.tidy(() => x.mul(tf.rsqrt(x.square().mean(-1, true).add(eps))).mul(w));
}

/** x Wᵀ for one linear module of a layer, plus the LoRA update (alpha/r) · x Aᵀ Bᵀ when an enabled adapter covers it. */
export function linear(model: LlamaModel, layer: number, module: LoraModule, x: tf.Tensor, training = false): tf.Tensor {
  return tf.tidy(() => {
    const W = model.weights[`model.layers.${layer}.${loraGroup(module)}.${module}.weight`]!;
    const x2 = x.reshape([-1, x.shape[x.rank - 1]!]);
    let y = tf.matMul(x2, W, false, true);
    const delta = model.lora?.enabled ? model.lora.delta(layer, module, x2, training) : null;
    if (delta) y = y.add(delta);
    return y.reshape([...x.shape.slice(0, -1), W.shape[0]!]);
  });
}

/**
 * Rotary embedding of x [B, heads, T, hd] with cos / sin [B, 1, T, hd/2] (the angles at each
 * token's position): rotate-half layout, x·cos + rotate_half(x)·sin with rotate_half([x1, x2]) =
 * [-x2, x1], i.e. [x1 cos - x2 sin, x2 cos + x1 sin].
 */
export function rotary(x: tf.Tensor4D, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => {
    const [x1, x2] = tf.split(x, 2, 3);
    return tf.concat([x1!.mul(cos).sub(x2!.mul(sin)), x2!.mul(cos).add(x1!.mul(sin))], 3) as tf.Tensor4D;
  });
}

/**
 * Causal self-attention of layer i on x [B, T, d] (already normed): q [B, H, T, hd] and k, v
 * [B, Hkv, T, hd]; query head h reads kv head floor(h / g), g = H / Hkv; scores q kᵀ / sqrt(hd)
 * plus `bias` [B, 1, T, T] (0 where allowed, a large negative number where hidden); softmax over
 * keys; the heads' outputs side by side through o_proj.
 */
export function attention(
  model: LlamaModel, i: number, x: tf.Tensor3D, cos: tf.Tensor, sin: tf.Tensor, bias: tf.Tensor, training = false,
): tf.Tensor3D {
  const c = model.config;
  const [B, T] = x.shape;
  const { numHeads: H, numKvHeads: Hkv } = c;
  const hd = headDim(c);
  const g = H / Hkv;
  return tf.tidy(() => {
    const heads = (y: tf.Tensor, n: number) => y.reshape([B, T, n, hd]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
    const q = rotary(heads(linear(model, i, 'q_proj', x, training), H), cos, sin);
    const k = rotary(heads(linear(model, i, 'k_proj', x, training), Hkv), cos, sin);
    const v = heads(linear(model, i, 'v_proj', x, training), Hkv);
    // each kv head serves g consecutive query heads
    const repeat = (t: tf.Tensor4D) => t.reshape([B * Hkv, 1, T, hd]).tile([1, g, 1, 1]).reshape([B, H, T, hd]);
    const scores = tf.matMul(q, repeat(k), false, true).div(Math.sqrt(hd)).add(bias);
    const out = tf.matMul(tf.softmax(scores), repeat(v)); // [B, H, T, hd]
    return linear(model, i, 'o_proj', out.transpose([0, 2, 1, 3]).reshape([B, T, H * hd]), training) as tf.Tensor3D;
  });
}

/** The SwiGLU feed-forward of layer i: down(silu(gate(x)) · up(x)), silu(z) = z · sigmoid(z). */
export function mlp(model: LlamaModel, i: number, x: tf.Tensor3D, training = false): tf.Tensor3D {
  return tf.tidy(() => {
    const gate = linear(model, i, 'gate_proj', x, training);
    const up = linear(model, i, 'up_proj', x, training);
    return linear(model, i, 'down_proj', gate.mul(tf.sigmoid(gate)).mul(up), training) as tf.Tensor3D;
  });
}

/** One transformer block: pre-norm attention and feed-forward, each added to the residual stream. */
export function block(
  model: LlamaModel, i: number, h: tf.Tensor3D, cos: tf.Tensor, sin: tf.Tensor, bias: tf.Tensor, training = false,
): tf.Tensor3D {
  const eps = model.config.rmsNormEps;
  const w = (name: string) => model.weights[`model.layers.${i}.${name}.weight`]!;
  return tf.tidy(() => {
    const a = h.add(attention(model, i, rmsNorm(h, w('input_layernorm'), eps) as tf.Tensor3D, cos, sin, bias, training)) as tf.Tensor3D;
    return a.add(mlp(model, i, rmsNorm(a, w('post_attention_layernorm'), eps) as tf.Tensor3D, training)) as tf.Tensor3D;
  });
}

/**
 * Final-norm hidden states [B, T, d] for ids [B, T]; mask [B, T] is 1 for a token, 0 for a pad
 * (default all 1). Position of a token = real tokens before it; a key is visible to a query when
 * it is not later and not a pad.
 */
export function referenceHidden(model: LlamaModel, ids: tf.Tensor2D, opts: { mask?: tf.Tensor2D; training?: boolean } = {}): tf.Tensor3D {
  const c = model.config;
  const [B, T] = ids.shape;
  const training = opts.training ?? false;
  return tf.tidy(() => {
    const mask = opts.mask ? opts.mask.toFloat() : tf.ones([B, T]);
    const pos = tf.maximum(tf.cumsum(mask, 1).sub(1), 0).toInt(); // [B, T]
    const table = ropeAngles(c, T);
    const angle = (t: Float32Array) => tf.gather(tf.tensor2d(t, [T, headDim(c) / 2]), pos).expandDims(1); // [B, 1, T, hd/2]
    const [cos, sin] = [angle(table.cos), angle(table.sin)];
    const causal = tf.linalg.bandPart(tf.ones([T, T]), -1, 0); // key s <= query j
    const visible = causal.reshape([1, 1, T, T]).mul(mask.reshape([B, 1, 1, T]));
    const bias = tf.sub(1, visible).mul(-1e9);

    let h = tf.gather(model.weights['model.embed_tokens.weight']!, ids.toInt()) as tf.Tensor3D;
    for (let i = 0; i < c.numLayers; i++) h = block(model, i, h, cos, sin, bias, training);
    return rmsNorm(h, model.weights['model.norm.weight']!, c.rmsNormEps) as tf.Tensor3D;
  });
}

/** Logits [B, T, V] of the reference forward. */
export function referenceForward(model: LlamaModel, ids: tf.Tensor2D, opts: { mask?: tf.Tensor2D; training?: boolean } = {}): tf.Tensor3D {
  return tf.tidy(() => {
    const h = referenceHidden(model, ids, opts);
    return tf.matMul(h.reshape([-1, model.config.hiddenSize]), model.headWeight(), false, true)
      .reshape([...h.shape.slice(0, 2), model.config.vocabSize]) as tf.Tensor3D;
  });
}

/**
 * The Llama model (SPEC §2): its weights under their Hugging Face names, and the calls every stage
 * uses. The forward pass itself is written plainly in reference.ts (read that one against the
 * paper); what runs is the same computation arranged for speed, in its own files, tested equal
 * to the reference:
 *
 *   hidden(), forward(), step()   fused.ts    fused projections, JS-side positions/mask, KV cache
 *   decode()                      decode.ts   folded norms, merged adapter, DecodeAttention op
 *   rotary tables                 rope.ts     the inverse frequencies, in one place
 *   KVCache                       kv-cache.ts
 *   LoRA (the update W + s·BA)    lora.ts
 *
 * Weights are tf.Variables, linear ones stored [out, in] and applied as x Wᵀ.
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { Rng } from '../random.js';
import { type LlamaConfig, headDim, validateConfig } from './config.js';
import { LoraAdapter, type LoraConfig, loraGroup } from './lora.js';
import { KVCache } from './kv-cache.js';
import { RopeTables } from './rope.js';
import { FusedForward } from './fused.js';
import { Decoder, type DecodingWeights } from './decode.js';

export { KVCache } from './kv-cache.js';
export type { DecodeLayer, DecodingWeights } from './decode.js';

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

  private readonly rope: RopeTables;
  private readonly fused: FusedForward;
  private readonly decoder: Decoder;
  /** The head matrix transposed once to [d, V] (PERF-NOTES: transposing per step is costly);
   *  remade when the head variable is reassigned (its dataId changes). */
  private headT: { source: object; t: tf.Tensor2D } | null = null;

  private constructor(config: LlamaConfig, weights: Record<string, tf.Variable>) {
    this.config = config;
    this.weights = weights;
    this.rope = new RopeTables(config);
    this.fused = new FusedForward(this, this.rope);
    this.decoder = new Decoder(this, this.rope);
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
    return this.fused.run(ids, opts.mask, null, opts.training ?? false);
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

  /**
   * Feeds ids [B, t] after the cache's positions; mask [B, pos + t] covers the whole history.
   * Returns the logits [B, t, V], or with `lastOnly` those of the last position, [B, 1, V] (what
   * generation needs of a prompt: the head then runs on B rows instead of B·t).
   */
  step(ids: tf.Tensor2D, cache: KVCache, mask: tf.Tensor2D, opts: { lastOnly?: boolean } = {}): tf.Tensor3D {
    const h = this.fused.run(ids, mask, cache, false);
    try {
      if (!opts.lastOnly) return this.head(h) as tf.Tensor3D;
      const [B, t, d] = h.shape;
      return tf.tidy(() => this.head(h.slice([0, t - 1, 0], [B, 1, d])) as tf.Tensor3D);
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
    return this.decoder.decode(ids, cache, mask);
  }

  /** The fused, pre-transposed weights decode() runs on (decode.ts), kept until a weight or the adapter changes. */
  decodingWeights(): DecodingWeights {
    return this.decoder.weights();
  }

  /** Frees decodingWeights() (they are rebuilt on the next decode). */
  disposeDecoding(): void {
    this.decoder.dispose();
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
    for (const { layer, module } of a.modules()) {
      const W = this.weights[`model.layers.${layer}.${loraGroup(module)}.${module}.weight`]!;
      tf.tidy(() => W.assign(tf.add(W, a.deltaWeight(layer, module)!)));
    }
    a.dispose();
    this.lora = null;
  }

  dispose(): void {
    this.lora?.dispose();
    this.lora = null;
    for (const v of Object.values(this.weights)) v.dispose();
    this.decoder.dispose();
    this.fused.dispose();
    this.headT?.t.dispose();
    this.headT = null;
  }
}


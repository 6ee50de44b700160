/**
 * LoRA (SPEC §3): a linear layer W [out, in] gains a low-rank update,
 *   y = x Wᵀ + (alpha / r) · dropout(x) Aᵀ Bᵀ,   A [r, in] ~ uniform(±1/sqrt(in)), B [out, r] = 0,
 * so a fresh adapter leaves the model unchanged and training moves only A and B. Without dropout
 * this is x (W + (alpha / r) B A)ᵀ. The update is written here only, in its three shapes: on
 * activations for one module (delta), for several modules reading the same x (fusedDelta), and
 * as a weight to merge (deltaWeight).
 * Files follow PEFT's layout so Python tools can load them.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { Rng } from '../random.js';
import { writeFileAtomic } from '../io/atomic.js';
import { hostTensors, readSafetensors, requireFinite, writeSafetensors } from '../io/safetensors.js';
import { headDim } from './config.js';
import type { LlamaModel } from './llama.js';

export type LoraModule = 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj';
export const LORA_MODULES: readonly LoraModule[] = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

export interface LoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  /** Short module names, or every linear layer but the LM head. */
  targetModules: string[] | 'all-linear';
}

/** The sub-block a module sits in, as in Hugging Face names. */
export function loraGroup(m: LoraModule): 'self_attn' | 'mlp' {
  return m === 'gate_proj' || m === 'up_proj' || m === 'down_proj' ? 'mlp' : 'self_attn';
}

/** PEFT's tensor key for one of A / B. */
export function loraKey(layer: number, m: LoraModule, which: 'A' | 'B'): string {
  return `base_model.model.model.layers.${layer}.${loraGroup(m)}.${m}.lora_${which}.weight`;
}

function resolveTargets(t: LoraConfig['targetModules'], where: string): LoraModule[] {
  if (t === 'all-linear') return [...LORA_MODULES];
  if (!Array.isArray(t) || t.length === 0) {
    throw new QrlhfError(`${where}: targetModules must be 'all-linear' or a non-empty list of ${LORA_MODULES.join(', ')}`);
  }
  const out: LoraModule[] = [];
  for (const m of t) {
    if (!(LORA_MODULES as readonly string[]).includes(m)) {
      throw new QrlhfError(`${where}: unknown target module "${m}" (expected one of ${LORA_MODULES.join(', ')})`);
    }
    if (!out.includes(m as LoraModule)) out.push(m as LoraModule);
  }
  // Keep a fixed order so saved files and variable maps do not depend on how the user listed them.
  return LORA_MODULES.filter((m) => out.includes(m));
}

function validateLoraConfig(cfg: LoraConfig, where: string): LoraModule[] {
  if (!Number.isInteger(cfg.r) || cfg.r <= 0) throw new QrlhfError(`${where}: r must be a positive integer, got ${cfg.r}`);
  if (!Number.isFinite(cfg.alpha) || cfg.alpha <= 0) throw new QrlhfError(`${where}: alpha must be positive, got ${cfg.alpha}`);
  if (!(cfg.dropout >= 0 && cfg.dropout < 1)) throw new QrlhfError(`${where}: dropout must be in [0, 1), got ${cfg.dropout}`);
  return resolveTargets(cfg.targetModules, where);
}

interface Pair {
  layer: number;
  module: LoraModule;
  A: tf.Variable;
  B: tf.Variable;
}

export class LoraAdapter {
  readonly config: LoraConfig;
  /** false: the model computes as its base (the RLOO reference policy). */
  enabled = true;
  /** Trainable A and B, by PEFT key. */
  readonly variables: Record<string, tf.Variable>;
  /** alpha / r */
  readonly scale: number;
  private readonly pairs: Map<string, Pair>;
  private readonly rng: Rng | null;

  private constructor(config: LoraConfig, pairs: Pair[], rng: Rng | null) {
    this.config = config;
    this.scale = config.alpha / config.r;
    this.rng = rng;
    this.pairs = new Map(pairs.map((p) => [`${p.layer}.${p.module}`, p]));
    this.variables = {};
    for (const p of pairs) {
      this.variables[loraKey(p.layer, p.module, 'A')] = p.A;
      this.variables[loraKey(p.layer, p.module, 'B')] = p.B;
    }
  }

  /** A fresh adapter for `model`: A uniform(±1/sqrt(in)) drawn from rng, B zero. */
  static create(model: LlamaModel, cfg: LoraConfig, rng: Rng): LoraAdapter {
    const targets = validateLoraConfig(cfg, 'LoRA config');
    const cfgCopy: LoraConfig = { ...cfg, targetModules: cfg.targetModules === 'all-linear' ? 'all-linear' : [...targets] };
    const pairs: Pair[] = [];
    for (let layer = 0; layer < model.config.numLayers; layer++) {
      for (const module of targets) {
        const [out, inp] = moduleShape(model, module);
        const bound = 1 / Math.sqrt(inp);
        const a = new Float32Array(cfg.r * inp);
        for (let i = 0; i < a.length; i++) a[i] = (2 * rng.next() - 1) * bound;
        pairs.push({
          layer,
          module,
          A: tf.variable(tf.tensor2d(a, [cfg.r, inp]), true),
          B: tf.variable(tf.zeros([out, cfg.r]), true),
        });
      }
    }
    return new LoraAdapter(cfgCopy, pairs, rng);
  }

  /** An adapter from given A / B tensors by PEFT key (takes ownership); used by loadLoraAdapter. */
  static fromTensors(model: LlamaModel, cfg: LoraConfig, tensors: Record<string, tf.Tensor>, where: string, rng?: Rng): LoraAdapter {
    const targets = validateLoraConfig(cfg, where);
    const pairs: Pair[] = [];
    const used = new Set<string>();
    try {
      for (let layer = 0; layer < model.config.numLayers; layer++) {
        for (const module of targets) {
          const [out, inp] = moduleShape(model, module);
          const get = (which: 'A' | 'B', shape: number[]) => {
            const key = loraKey(layer, module, which);
            const t = tensors[key];
            if (!t) throw new QrlhfError(`${where}: "${key}" is missing (expected shape [${shape}])`);
            if (!tf.util.arraysEqual(t.shape, shape)) {
              throw new QrlhfError(`${where}: "${key}" has shape [${t.shape}], expected [${shape}]`);
            }
            used.add(key);
            return t;
          };
          const A = get('A', [cfg.r, inp]);
          const B = get('B', [out, cfg.r]);
          pairs.push({ layer, module, A: tf.variable(A.toFloat(), true), B: tf.variable(B.toFloat(), true) });
        }
      }
      for (const key of Object.keys(tensors)) {
        if (!used.has(key)) throw new QrlhfError(`${where}: unexpected tensor "${key}" for this model and target_modules`);
      }
    } catch (e) {
      for (const p of pairs) {
        p.A.dispose();
        p.B.dispose();
      }
      throw e;
    } finally {
      for (const t of Object.values(tensors)) t.dispose();
    }
    return new LoraAdapter(cfg, pairs, rng ?? null);
  }

  /** Every adapted (layer, module) with its A and B. */
  modules(): Pair[] {
    return [...this.pairs.values()];
  }

  /** The A and B of one adapted (layer, module), or null when this adapter does not cover it. */
  pair(layer: number, module: LoraModule): { A: tf.Variable; B: tf.Variable } | null {
    return this.pairs.get(`${layer}.${module}`) ?? null;
  }

  /** Whether delta() / middle() draw a dropout mask in this mode. */
  dropsOut(training: boolean): boolean {
    return training && this.config.dropout > 0;
  }

  /**
   * The update (alpha / r) · dropout(x) Aᵀ Bᵀ for one linear layer of the model, or null when this
   * adapter does not cover it. Dropout draws its mask from a seed taken from the adapter's Rng.
   */
  delta(layer: number, module: LoraModule, x: tf.Tensor, training: boolean): tf.Tensor | null {
    const p = this.pairs.get(`${layer}.${module}`);
    if (!p) return null;
    // The scale multiplies the narrow [N, r] middle, not the [N, out] result (and so its gradient).
    return tf.tidy(() => tf.matMul(this.middle(layer, module, x, training)!, p.B, false, true));
  }

  /**
   * delta() for several modules that read the same x, as one pair of products: their middles side
   * by side [N, Σ r], times a block matrix of their B's (module m's rows hold its B in its own r
   * columns, zeros elsewhere) → [N, Σ out]; `outs` are the modules' output widths. Null when the
   * adapter covers none of them.
   */
  fusedDelta(layer: number, modules: LoraModule[], outs: number[], x: tf.Tensor, training: boolean): tf.Tensor | null {
    const covered = modules.filter((m) => this.pair(layer, m));
    if (covered.length === 0) return null;
    return tf.tidy(() => {
      const r = this.config.r;
      const R = r * covered.length;
      const mid = this.dropsOut(training)
        ? tf.concat(covered.map((m) => this.middle(layer, m, x, training)!), 1)
        : tf.mul(tf.matMul(x, tf.concat(covered.map((m) => this.pair(layer, m)!.A), 0), false, true), this.scale);
      let at = 0;
      const rows = modules.map((m, j) => {
        const p = this.pair(layer, m);
        if (!p) return tf.zeros([outs[j]!, R]);
        const parts: tf.Tensor[] = [];
        if (at > 0) parts.push(tf.zeros([outs[j]!, at]));
        parts.push(p.B);
        if (at + r < R) parts.push(tf.zeros([outs[j]!, R - at - r]));
        at += r;
        return parts.length > 1 ? tf.concat(parts, 1) : p.B;
      });
      return tf.matMul(mid, rows.length > 1 ? tf.concat(rows, 0) : rows[0]!, false, true);
    });
  }

  /** The update as a weight, (alpha / r) B A [out, in] (merging, and decoding on merged weights); null when not covered. */
  deltaWeight(layer: number, module: LoraModule): tf.Tensor | null {
    const p = this.pairs.get(`${layer}.${module}`);
    if (!p) return null;
    return tf.tidy(() => tf.mul(tf.matMul(p.B, p.A), this.scale));
  }

  /** The first half of delta(): (alpha / r) · dropout(x) Aᵀ, [N, r]; null when not covered. */
  middle(layer: number, module: LoraModule, x: tf.Tensor, training: boolean): tf.Tensor | null {
    const p = this.pairs.get(`${layer}.${module}`);
    if (!p) return null;
    return tf.tidy(() => {
      let xin = x;
      if (this.dropsOut(training)) {
        if (!this.rng) throw new QrlhfError('LoRA dropout needs an Rng: load the adapter with one to train it');
        xin = tf.dropout(x, this.config.dropout, undefined, this.rng.seed32());
      }
      return tf.mul(tf.matMul(xin, p.A, false, true), this.scale);
    });
  }

  dispose(): void {
    for (const p of this.pairs.values()) {
      p.A.dispose();
      p.B.dispose();
    }
    this.pairs.clear();
  }
}

function moduleShape(model: LlamaModel, m: LoraModule): [number, number] {
  const c = model.config;
  const d = c.hiddenSize;
  const q = c.numHeads * headDim(c);
  const kv = c.numKvHeads * headDim(c);
  const I = c.intermediateSize;
  const shapes: Record<LoraModule, [number, number]> = {
    q_proj: [q, d],
    k_proj: [kv, d],
    v_proj: [kv, d],
    o_proj: [d, q],
    gate_proj: [I, d],
    up_proj: [I, d],
    down_proj: [d, I],
  };
  return shapes[m];
}

/** Runs fn with the model's adapter switched off (the base model), restoring it afterwards. */
export function withLoraDisabled<T>(model: LlamaModel, fn: () => T): T {
  const a = model.lora;
  if (!a) return fn();
  const was = a.enabled;
  a.enabled = false;
  try {
    return fn();
  } finally {
    a.enabled = was;
  }
}

const CONFIG_FILE = 'adapter_config.json';
const WEIGHTS_FILE = 'adapter_model.safetensors';

/** Writes adapter_config.json and adapter_model.safetensors in PEFT's layout (each file atomically). */
export async function saveLoraAdapter(dir: string, adapter: LoraAdapter, baseModelNameOrPath: string): Promise<void> {
  const targets = resolveTargets(adapter.config.targetModules, 'LoRA config');
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: adapter.config.r,
    lora_alpha: adapter.config.alpha,
    lora_dropout: adapter.config.dropout,
    target_modules: targets,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    modules_to_save: null,
    base_model_name_or_path: baseModelNameOrPath,
  };
  const path = join(dir, WEIGHTS_FILE);
  writeSafetensors(path, await hostTensors(adapter.variables, path), { format: 'pt' });
  writeFileAtomic(join(dir, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n');
}

/**
 * Reads a PEFT LoRA adapter folder and attaches it to `model` (replacing any adapter). `rng` is
 * needed only to train it further with dropout.
 */
export function loadLoraAdapter(dir: string, model: LlamaModel, rng?: Rng): LoraAdapter {
  const cfgPath = join(dir, CONFIG_FILE);
  const wPath = join(dir, WEIGHTS_FILE);
  if (!existsSync(cfgPath)) throw new QrlhfError(`${cfgPath}: not found (expected a PEFT LoRA adapter folder)`);
  if (!existsSync(wPath)) throw new QrlhfError(`${wPath}: not found (expected a PEFT LoRA adapter folder)`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(cfgPath, 'utf8'));
  } catch (e) {
    throw new QrlhfError(`${cfgPath}: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const cfg = loraConfigFromPeft(json, cfgPath);
  const { tensors: raw } = readSafetensors(wPath);
  const tensors: Record<string, tf.Tensor> = {};
  for (const [k, r] of Object.entries(raw)) {
    // PEFT sometimes writes the adapter name into keys ("...lora_A.default.weight"); not in files it saves.
    requireFinite(r.data, r.shape, wPath, k);
    tensors[k] = tf.tensor(r.data, r.shape, r.dtype === 'I32' || r.dtype === 'I64' ? 'int32' : 'float32');
  }
  const adapter = LoraAdapter.fromTensors(model, cfg, tensors, wPath, rng);
  model.lora?.dispose();
  model.lora = adapter;
  return adapter;
}

function loraConfigFromPeft(json: unknown, where: string): LoraConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new QrlhfError(`${where}: expected a JSON object`);
  const o = json as Record<string, unknown>;
  if (o['peft_type'] !== undefined && o['peft_type'] !== 'LORA') {
    throw new QrlhfError(`${where}: "peft_type" must be "LORA", got ${JSON.stringify(o['peft_type'])}`);
  }
  if (o['bias'] !== undefined && o['bias'] !== 'none') {
    throw new QrlhfError(`${where}: "bias" must be "none" (LoRA biases are not supported), got ${JSON.stringify(o['bias'])}`);
  }
  for (const key of ['use_dora', 'use_rslora']) {
    if (o[key] === true) throw new QrlhfError(`${where}: "${key}" is not supported (expected false)`);
  }
  const num = (key: string, dflt?: number): number => {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new QrlhfError(`${where}: "${key}" must be a number, got ${JSON.stringify(o[key])}`);
    return v;
  };
  const tm = o['target_modules'];
  let targetModules: LoraConfig['targetModules'];
  if (tm === 'all-linear') targetModules = 'all-linear';
  else if (Array.isArray(tm) && tm.every((x) => typeof x === 'string')) targetModules = tm as string[];
  else throw new QrlhfError(`${where}: "target_modules" must be a list of module names or "all-linear", got ${JSON.stringify(tm)}`);
  const cfg: LoraConfig = { r: num('r'), alpha: num('lora_alpha'), dropout: num('lora_dropout', 0), targetModules };
  validateLoraConfig(cfg, where);
  return cfg;
}

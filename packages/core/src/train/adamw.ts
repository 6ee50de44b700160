import * as tf from '@tensorflow/tfjs';
import { QrlhfError, check } from '../errors.js';

export interface AdamWConfig {
  /** Default learning rate; `step(grads, lr)` takes the scheduled one. */
  lr: number;
  beta1?: number; // 0.9
  beta2?: number; // 0.999
  eps?: number; // 1e-8
  /** Decoupled weight decay (PyTorch's AdamW default 0.01). */
  weightDecay?: number;
}

export interface AdamWState {
  step: number;
  /** 'm.<var>' and 'v.<var>' for every variable: the first and second moment estimates. */
  tensors: Record<string, tf.Tensor>;
}

/**
 * AdamW as in PyTorch (Loshchilov & Hutter): for each variable p with gradient g, at step t
 *   p ← p − lr·wd·p                                  (decoupled weight decay, before the Adam update)
 *   m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
 *   p ← p − lr · (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps)
 * The step count t is shared by all variables and counts calls to `step`. A variable with no
 * entry in `grads` is left untouched (no decay either), like a PyTorch parameter whose grad is None.
 */
export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  readonly lr: number;
  private t = 0;
  private readonly vars: Record<string, tf.Variable>;
  private readonly m: Record<string, tf.Variable> = {};
  private readonly v: Record<string, tf.Variable> = {};

  constructor(vars: Record<string, tf.Variable>, cfg: AdamWConfig) {
    this.lr = cfg.lr;
    this.beta1 = cfg.beta1 ?? 0.9;
    this.beta2 = cfg.beta2 ?? 0.999;
    this.eps = cfg.eps ?? 1e-8;
    this.weightDecay = cfg.weightDecay ?? 0.01;
    check(Number.isFinite(this.lr) && this.lr >= 0, `AdamW: lr must be a number >= 0, got ${cfg.lr}`);
    check(this.beta1 >= 0 && this.beta1 < 1, `AdamW: beta1 must be in [0, 1), got ${this.beta1}`);
    check(this.beta2 >= 0 && this.beta2 < 1, `AdamW: beta2 must be in [0, 1), got ${this.beta2}`);
    check(this.eps > 0, `AdamW: eps must be > 0, got ${this.eps}`);
    check(this.weightDecay >= 0, `AdamW: weightDecay must be >= 0, got ${this.weightDecay}`);
    this.vars = { ...vars };
    for (const [name, p] of Object.entries(vars)) {
      // a variable holds its own reference to the data: the zeros it starts from are freed here
      // (they were not, and every optimiser left two tensors per variable behind)
      const zm = tf.zerosLike(p);
      const zv = tf.zerosLike(p);
      this.m[name] = tf.variable(zm, false, undefined, 'float32');
      this.v[name] = tf.variable(zv, false, undefined, 'float32');
      zm.dispose();
      zv.dispose();
    }
  }

  /** Number of updates made so far (t of the last update). */
  get stepCount(): number {
    return this.t;
  }

  /** One update with learning rate `lr`; `grads` are not disposed (they belong to the caller). */
  step(grads: Record<string, tf.Tensor>, lr: number = this.lr): void {
    for (const name of Object.keys(grads)) {
      if (!(name in this.vars)) throw new QrlhfError(`AdamW.step: gradient for unknown variable "${name}"`);
    }
    this.t++;
    const t = this.t;
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = this;
    const bc1 = 1 - Math.pow(b1, t);
    const bc2 = 1 - Math.pow(b2, t);
    for (const [name, g] of Object.entries(grads)) {
      const p = this.vars[name]!;
      const m = this.m[name]!;
      const v = this.v[name]!;
      check(
        g.shape.length === p.shape.length && g.shape.every((d, i) => d === p.shape[i]),
        () => `AdamW.step: gradient of "${name}" has shape [${g.shape}], the variable [${p.shape}]`,
      );
      tf.tidy(() => {
        const mNew = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
        const vNew = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
        const decayed = wd !== 0 ? tf.mul(p, 1 - lr * wd) : p;
        const denom = tf.add(tf.sqrt(tf.div(vNew, bc2)), eps);
        const update = tf.div(tf.div(mNew, bc1), denom);
        m.assign(mNew);
        v.assign(vNew);
        p.assign(tf.sub(decayed, tf.mul(update, lr)));
      });
    }
  }

  /** The moments, live (owned by the optimiser: do not dispose them), and the step count. */
  getState(): AdamWState {
    const tensors: Record<string, tf.Tensor> = {};
    for (const name of Object.keys(this.vars)) {
      tensors[`m.${name}`] = this.m[name]!;
      tensors[`v.${name}`] = this.v[name]!;
    }
    return { step: this.t, tensors };
  }

  /** Copies a saved state in (the given tensors stay the caller's). Every moment must be present. */
  setState(s: AdamWState): void {
    check(Number.isInteger(s.step) && s.step >= 0, `AdamW.setState: step must be an integer >= 0, got ${s.step}`);
    const expected = new Set(Object.keys(this.vars).flatMap((n) => [`m.${n}`, `v.${n}`]));
    for (const k of Object.keys(s.tensors)) {
      if (!expected.has(k)) throw new QrlhfError(`AdamW.setState: unexpected tensor "${k}" (no such variable)`);
    }
    for (const k of expected) {
      const src = s.tensors[k];
      if (!src) throw new QrlhfError(`AdamW.setState: missing tensor "${k}"`);
      const dst = k.startsWith('m.') ? this.m[k.slice(2)]! : this.v[k.slice(2)]!;
      check(
        src.shape.length === dst.shape.length && src.shape.every((d, i) => d === dst.shape[i]),
        () => `AdamW.setState: "${k}" has shape [${src.shape}], expected [${dst.shape}]`,
      );
      dst.assign(src.dtype === 'float32' ? src : tf.tidy(() => tf.cast(src, 'float32')));
    }
    this.t = s.step;
  }

  /** Frees the moment variables (not the model's variables). */
  dispose(): void {
    for (const name of Object.keys(this.m)) {
      this.m[name]!.dispose();
      this.v[name]!.dispose();
    }
  }
}

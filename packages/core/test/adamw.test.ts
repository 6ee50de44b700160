import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { AdamW, QrlhfError, Rng } from '@qrlhf/core';

/** Plain float64 AdamW, written from the formulas (PyTorch's algorithm, decoupled decay). */
class RefAdamW {
  m: Map<string, number[]> = new Map();
  v: Map<string, number[]> = new Map();
  t = 0;
  constructor(
    public p: Map<string, number[]>,
    public b1: number,
    public b2: number,
    public eps: number,
    public wd: number,
    public coupled = false,
  ) {
    for (const [k, x] of p) {
      this.m.set(k, x.map(() => 0));
      this.v.set(k, x.map(() => 0));
    }
  }
  step(grads: Map<string, number[]>, lr: number): void {
    this.t++;
    for (const [k, g0] of grads) {
      const p = this.p.get(k)!;
      const m = this.m.get(k)!;
      const v = this.v.get(k)!;
      for (let i = 0; i < p.length; i++) {
        const g = this.coupled ? g0[i]! + this.wd * p[i]! : g0[i]!; // Adam + L2 (wrong for AdamW)
        if (!this.coupled) p[i] = p[i]! - lr * this.wd * p[i]!;
        m[i] = this.b1 * m[i]! + (1 - this.b1) * g;
        v[i] = this.b2 * v[i]! + (1 - this.b2) * g * g;
        const mh = m[i]! / (1 - this.b1 ** this.t);
        const vh = v[i]! / (1 - this.b2 ** this.t);
        p[i] = p[i]! - (lr * mh) / (Math.sqrt(vh) + this.eps);
      }
    }
  }
}

function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i]! - b[i]!) / Math.max(1e-3, Math.abs(b[i]!)));
  return e;
}

function setup(seed: number) {
  const rng = new Rng(seed);
  const shapes: Record<string, number[]> = { w: [3, 4], b: [5], s: [] };
  const init = new Map<string, number[]>();
  const vars: Record<string, tf.Variable> = {};
  for (const [k, sh] of Object.entries(shapes)) {
    const n = sh.reduce((a, d) => a * d, 1);
    const x = Array.from({ length: n }, () => Math.fround(rng.normal()));
    init.set(k, x);
    vars[k] = tf.variable(tf.tensor(x, sh), true);
  }
  const gradsAt = (step: number) => {
    const g = new Map<string, number[]>();
    for (const [k, x] of init) {
      if (k === 'b' && step % 3 === 2) continue; // sometimes no gradient: no update, no decay
      // gradients of varying scale, fround so both sides see the same inputs
      g.set(k, x.map(() => Math.fround(rng.normal() * (step % 2 ? 0.01 : 3))));
    }
    return g;
  };
  return { shapes, init, vars, gradsAt };
}

function toTf(g: Map<string, number[]>, shapes: Record<string, number[]>): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [k, x] of g) out[k] = tf.tensor(x, shapes[k]);
  return out;
}

test('AdamW matches a float64 reference over 12 steps with weight decay and a changing lr', (t) => {
  const { shapes, init, vars, gradsAt } = setup(1);
  const cfg = { lr: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1 };
  const opt = new AdamW(vars, cfg);
  const ref = new RefAdamW(new Map([...init].map(([k, x]) => [k, [...x]])), 0.8, 0.95, 1e-6, 0.1);
  const coupled = new RefAdamW(new Map([...init].map(([k, x]) => [k, [...x]])), 0.8, 0.95, 1e-6, 0.1, true);
  const before = tf.memory().numTensors;
  for (let s = 0; s < 12; s++) {
    const g = gradsAt(s);
    const lr = 0.05 * (1 - s / 20);
    const gt = toTf(g, shapes);
    opt.step(gt, lr);
    for (const x of Object.values(gt)) x.dispose();
    ref.step(g, lr);
    coupled.step(g, lr);
  }
  t.is(tf.memory().numTensors, before, 'no tensor leaked by step()');
  t.is(opt.stepCount, 12);
  let distToCoupled = 0;
  for (const k of Object.keys(shapes)) {
    const got = vars[k]!.dataSync();
    const err = maxRelErr(got, ref.p.get(k)!);
    t.true(err < 2e-5, `${k}: max rel err ${err}`);
    distToCoupled = Math.max(distToCoupled, maxRelErr(got, coupled.p.get(k)!));
    const st = opt.getState();
    t.true(maxRelErr(st.tensors[`m.${k}`]!.dataSync(), ref.m.get(k)!) < 2e-5);
    t.true(maxRelErr(st.tensors[`v.${k}`]!.dataSync(), ref.v.get(k)!) < 2e-5);
  }
  t.true(distToCoupled > 1e-3, `the decoupled update differs from Adam+L2 (${distToCoupled})`);
  t.is(ref.t, 12);
});

test('weight decay alone shrinks a parameter by (1 - lr*wd) when its gradient is zero', (t) => {
  const p = tf.variable(tf.tensor([2, -4]));
  const opt = new AdamW({ p }, { lr: 0.1, weightDecay: 0.5 });
  const g = tf.zeros([2]);
  opt.step({ p: g }, 0.1);
  const got = p.dataSync();
  t.true(Math.abs(got[0]! - 2 * 0.95) < 1e-6 && Math.abs(got[1]! + 4 * 0.95) < 1e-6, `${got}`);
});

test('setState into a fresh optimiser continues exactly like the uninterrupted one', (t) => {
  const a = setup(2);
  const b = setup(2);
  const cfg = { lr: 0.01, weightDecay: 0.01 };
  const optA = new AdamW(a.vars, cfg);
  for (let s = 0; s < 5; s++) optA.step(toTf(a.gradsAt(s), a.shapes));
  // b: copy A's variables and optimizer state into fresh objects, then both continue
  for (const k of Object.keys(a.shapes)) b.vars[k]!.assign(a.vars[k]!);
  for (let s = 0; s < 5; s++) b.gradsAt(s); // advance b's rng to the same place
  const optB = new AdamW(b.vars, cfg);
  const saved = optA.getState();
  const copy = { step: saved.step, tensors: Object.fromEntries(Object.entries(saved.tensors).map(([k, x]) => [k, x.clone()])) };
  optB.setState(copy);
  for (const x of Object.values(copy.tensors)) x.dispose();
  for (let s = 5; s < 9; s++) {
    optA.step(toTf(a.gradsAt(s), a.shapes));
    optB.step(toTf(b.gradsAt(s), b.shapes));
  }
  for (const k of Object.keys(a.shapes)) t.deepEqual(b.vars[k]!.dataSync(), a.vars[k]!.dataSync());
  t.is(optB.stepCount, 9);
});

test('bad gradients and states are QrlhfErrors', (t) => {
  const p = tf.variable(tf.zeros([2, 2]));
  const opt = new AdamW({ p }, { lr: 0.1 });
  t.throws(() => opt.step({ q: tf.zeros([2, 2]) }), { instanceOf: QrlhfError, message: /unknown variable "q"/ });
  t.throws(() => opt.step({ p: tf.zeros([4]) }), { instanceOf: QrlhfError, message: /shape \[4\]/ });
  t.throws(() => opt.setState({ step: 1, tensors: {} }), { instanceOf: QrlhfError, message: /missing tensor "m.p"/ });
  t.throws(() => new AdamW({ p }, { lr: -1 }), { instanceOf: QrlhfError });
  t.throws(() => new AdamW({ p }, { lr: 1, beta2: 1 }), { instanceOf: QrlhfError });
});

test('an optimiser leaves no tensor behind: construction, steps and dispose', (t) => {
  const before = tf.memory().numTensors;
  const vars = tf.tidy(() => ({ a: tf.variable(tf.tensor1d([1, 2, 3])), b: tf.variable(tf.tensor2d([[1, -1], [0.5, 2]])) }));
  const withVars = tf.memory().numTensors;
  const opt = new AdamW(vars, { lr: 0.1 });
  // the two moments of each variable, nothing else
  t.is(tf.memory().numTensors, withVars + 4);
  for (let i = 0; i < 3; i++) {
    const grads = { a: tf.ones([3]), b: tf.ones([2, 2]) };
    opt.step(grads);
    grads.a.dispose();
    grads.b.dispose();
  }
  t.is(tf.memory().numTensors, withVars + 4);
  opt.dispose();
  t.is(tf.memory().numTensors, withVars);
  vars.a.dispose();
  vars.b.dispose();
  t.is(tf.memory().numTensors, before);
});

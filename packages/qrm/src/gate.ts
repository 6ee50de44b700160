/**
 * Stage 2 of QRM (SPEC §4): the gating network and how it mixes the attribute distributions.
 *
 * The gate is an MLP on the prompt feature: numHidden linear+ReLU layers of width hiddenSize, then a
 * linear layer to M logits; g = beta · softmax(logits / T) with T fixed (10) and beta learned
 * (init 1). The mixed distribution is the paper's equation (3), Q_mix(tau_k) = Σ_m g_m Q'_m(tau_k),
 * and its expectation E = mean_k Q_mix(tau_k) = Σ_m g_m · mean_k Q'_m(tau_k). The gate is trained
 * (heads frozen, attribute quantiles fixed inputs) with the Bradley-Terry loss
 * −log σ(E(chosen) − E(rejected)).
 *
 * Two architectures (`kind`):
 * - 'mlp' (qrlhf's own, trained here): (Linear with bias → ReLU) × numHidden, Linear with bias.
 * - 'batchnorm' (the released QRM / ArmoRM gate, read from and written to their folders):
 *   (Linear without bias → ReLU → BatchNorm1d) × numHidden, Linear with bias; BatchNorm in eval
 *   mode, y = (h − running_mean) / sqrt(running_var + eps) · weight + bias, eps = 1e-5 (PyTorch's
 *   default). beta is the release's `logit_scale`. Scored here, not trained (trainGate refuses it).
 */
import * as tf from '@tensorflow/tfjs';
import { AdamW, QrlhfError, accumulateGradients, applyGradients, cosineSchedule, requireFinite, type Rng } from '@qrlhf/core';

export interface GateConfig {
  /** Width of the prompt feature d. */
  inputDim: number;
  /** Number of attributes M (the gate's outputs). */
  numAttributes: number;
  /** Width of each hidden layer (ArmoRM: 1024). */
  hiddenSize: number;
  /** Number of hidden layers (3). */
  numHidden: number;
  /** Softmax temperature T (fixed, 10; the released QRM-Llama3.1-8B uses 5). */
  temperature: number;
  /** 'mlp' (absent = 'mlp') or 'batchnorm' (the released layout; see the header). */
  kind?: GateKind;
}

export type GateKind = 'mlp' | 'batchnorm';
/** BatchNorm1d's eps in PyTorch (the released gate's BatchNorm layers use the default). */
export const BATCHNORM_EPS = 1e-5;

export const DEFAULT_GATE_CONFIG = { hiddenSize: 1024, numHidden: 3, temperature: 10 } as const;

/** A float32 tensor as plain data, in the layout written to gate.safetensors. */
export interface F32Tensor {
  dtype: 'F32';
  shape: number[];
  data: Float32Array;
}

function checkConfig(c: GateConfig): void {
  for (const key of ['inputDim', 'numAttributes', 'hiddenSize', 'numHidden'] as const) {
    const v = c[key];
    if (!Number.isInteger(v) || v < (key === 'numHidden' ? 0 : 1)) {
      throw new QrlhfError(`gate config: ${key} must be an integer >= ${key === 'numHidden' ? 0 : 1}, got ${v}`);
    }
  }
  if (!Number.isFinite(c.temperature) || c.temperature <= 0) {
    throw new QrlhfError(`gate config: temperature must be > 0, got ${c.temperature}`);
  }
  if (c.kind !== undefined && c.kind !== 'mlp' && c.kind !== 'batchnorm') {
    throw new QrlhfError(`gate config: kind must be "mlp" or "batchnorm", got ${JSON.stringify(c.kind)}`);
  }
}

/** Index in the PyTorch ModuleList of layer i's Linear (and, for 'batchnorm', of its BatchNorm: + 2). */
function linearIndex(c: GateConfig, i: number): number {
  return c.kind === 'batchnorm' ? 3 * i : i;
}

const BN_PARTS = ['weight', 'bias', 'running_mean', 'running_var'] as const;

/**
 * Variable names follow PyTorch's module layout (`layers.{i}.weight`, `layers.{i}.bias`, the last
 * layer is i = numHidden) plus `beta`. In memory the weights are [in, out] (so the forward product
 * needs no transpose); in gate.safetensors they are stored [out, in] like every Linear weight.
 */
export class GateNetwork {
  readonly config: GateConfig;
  readonly variables: Record<string, tf.Variable>;

  private constructor(config: GateConfig, variables: Record<string, tf.Variable>) {
    this.config = config;
    this.variables = variables;
  }

  private static layerShapes(c: GateConfig): [number, number][] {
    const shapes: [number, number][] = [];
    let inDim = c.inputDim;
    for (let i = 0; i < c.numHidden; i++) {
      shapes.push([inDim, c.hiddenSize]);
      inDim = c.hiddenSize;
    }
    shapes.push([inDim, c.numAttributes]);
    return shapes;
  }

  /** A fresh gate: PyTorch's default Linear init (weights and biases uniform in ±1/sqrt(fan_in)), beta = 1. */
  static create(
    cfg: Pick<GateConfig, 'inputDim' | 'numAttributes'> & Partial<GateConfig>,
    rng: Rng,
  ): GateNetwork {
    const config: GateConfig = {
      inputDim: cfg.inputDim,
      numAttributes: cfg.numAttributes,
      hiddenSize: cfg.hiddenSize ?? DEFAULT_GATE_CONFIG.hiddenSize,
      numHidden: cfg.numHidden ?? DEFAULT_GATE_CONFIG.numHidden,
      temperature: cfg.temperature ?? DEFAULT_GATE_CONFIG.temperature,
    };
    checkConfig(config);
    const vars: Record<string, tf.Variable> = {};
    GateNetwork.layerShapes(config).forEach(([fin, fout], i) => {
      const bound = 1 / Math.sqrt(fin);
      const w = new Float32Array(fin * fout);
      for (let j = 0; j < w.length; j++) w[j] = (2 * rng.next() - 1) * bound;
      const b = new Float32Array(fout);
      for (let j = 0; j < b.length; j++) b[j] = (2 * rng.next() - 1) * bound;
      vars[`layers.${i}.weight`] = makeVar(tf.tensor2d(w, [fin, fout]), `gate.layers.${i}.weight`);
      vars[`layers.${i}.bias`] = makeVar(tf.tensor1d(b), `gate.layers.${i}.bias`);
    });
    vars['beta'] = makeVar(tf.tensor1d([1]), 'gate.beta');
    return new GateNetwork(config, vars);
  }

  /** A gate from file tensors (the layout of `toTensors`); checks every name and shape. */
  static fromTensors(config: GateConfig, tensors: Record<string, { shape: number[]; data: ArrayLike<number> }>, where = 'gate'): GateNetwork {
    checkConfig(config);
    const bn = config.kind === 'batchnorm';
    const vars: Record<string, tf.Variable> = {};
    const get = (name: string, shape: number[]): Float32Array => {
      const t = tensors[name];
      if (!t) throw new QrlhfError(`${where}: tensor "${name}" is missing (expected shape [${shape.join(', ')}] for a ${config.kind ?? 'mlp'} gate with ${config.numHidden} hidden layers)`);
      if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
        throw new QrlhfError(`${where}: tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
      }
      requireFinite(t.data, t.shape, where, name);
      return Float32Array.from(t.data);
    };
    const ignored = new Set<string>();
    try {
      GateNetwork.layerShapes(config).forEach(([fin, fout], i) => {
        const li = linearIndex(config, i);
        const stored = get(`layers.${li}.weight`, [fout, fin]); // [out, in] on file
        const w = new Float32Array(fin * fout);
        for (let o = 0; o < fout; o++) for (let j = 0; j < fin; j++) w[j * fout + o] = stored[o * fin + j]!;
        vars[`layers.${li}.weight`] = makeVar(tf.tensor2d(w, [fin, fout]), `gate.layers.${li}.weight`);
        const hidden = i < config.numHidden;
        if (!bn || !hidden) vars[`layers.${li}.bias`] = makeVar(tf.tensor1d(get(`layers.${li}.bias`, [fout])), `gate.layers.${li}.bias`);
        if (bn && hidden) {
          for (const part of BN_PARTS) {
            const name = `layers.${li + 2}.${part}`;
            vars[name] = makeVar(tf.tensor1d(get(name, [fout])), `gate.${name}`, !part.startsWith('running_'));
          }
          ignored.add(`layers.${li + 2}.num_batches_tracked`); // a training counter, unused in eval mode
        }
      });
      vars['beta'] = makeVar(tf.tensor1d(get('beta', [1])), 'gate.beta');
    } catch (e) {
      for (const v of Object.values(vars)) v.dispose();
      throw e;
    }
    const extra = Object.keys(tensors).filter((k) => !(k in vars) && !ignored.has(k));
    if (extra.length) {
      for (const v of Object.values(vars)) v.dispose();
      throw new QrlhfError(`${where}: unexpected tensors ${extra.join(', ')} for a ${config.kind ?? 'mlp'} gate with ${config.numHidden} hidden layers`);
    }
    return new GateNetwork(config, vars);
  }

  /** The parameters as plain float32 data, Linear weights [out, in]. */
  async toTensors(): Promise<Record<string, F32Tensor>> {
    const out: Record<string, F32Tensor> = {};
    for (const [name, v] of Object.entries(this.variables)) {
      const data = (await v.data()) as Float32Array;
      if (name.endsWith('.weight') && v.shape.length === 2) {
        const [fin, fout] = v.shape as [number, number];
        const t = new Float32Array(fin * fout);
        for (let j = 0; j < fin; j++) for (let o = 0; o < fout; o++) t[o * fin + j] = data[j * fout + o]!;
        out[name] = { dtype: 'F32', shape: [fout, fin], data: t };
      } else {
        out[name] = { dtype: 'F32', shape: [...v.shape], data: Float32Array.from(data) };
      }
    }
    return out;
  }

  /** The gate's scale beta (read with await: a GPU backend has no synchronous read). */
  async beta(): Promise<number> {
    return (await this.variables['beta']!.data())[0]!;
  }

  /** Gate weights g [B, M] for prompt features x [B, d] (differentiable w.r.t. the variables). */
  weights(x: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      const c = this.config;
      const v = this.variables;
      let h: tf.Tensor2D = x;
      for (let i = 0; i <= c.numHidden; i++) {
        const li = linearIndex(c, i);
        h = tf.matMul(h, v[`layers.${li}.weight`]!);
        if (v[`layers.${li}.bias`]) h = tf.add(h, v[`layers.${li}.bias`]!);
        if (i < c.numHidden) h = tf.relu(h);
        if (i < c.numHidden && c.kind === 'batchnorm') {
          const bn = (part: string): tf.Variable => v[`layers.${li + 2}.${part}`]!;
          const scale = tf.mul(bn('weight'), tf.rsqrt(tf.add(bn('running_var'), BATCHNORM_EPS)));
          h = tf.add(tf.mul(tf.sub(h, bn('running_mean')), scale), bn('bias'));
        }
      }
      return tf.mul(tf.softmax(tf.div(h, c.temperature)), this.variables['beta']!) as tf.Tensor2D;
    });
  }

  /** Gate weights [n, M] for n prompt features [n, d], computed in batches. */
  async predict(x: Float32Array, n: number, batchSize = 1024): Promise<Float32Array> {
    const { inputDim: d, numAttributes: M } = this.config;
    if (x.length !== n * d) throw new QrlhfError(`gate: expected ${n} x ${d} prompt features, got ${x.length} values`);
    const out = new Float32Array(n * M);
    for (let s = 0; s < n; s += batchSize) {
      const e = Math.min(n, s + batchSize);
      const g = tf.tidy(() => this.weights(tf.tensor2d(x.subarray(s * d, e * d), [e - s, d])));
      out.set((await g.data()) as Float32Array, s * M);
      g.dispose();
    }
    return out;
  }

  dispose(): void {
    for (const v of Object.values(this.variables)) v.dispose();
  }
}

let uidCounter = 0;
function uid(): number {
  return uidCounter++;
}

/** A trainable variable holding a copy of `t`; `t` is disposed (a variable does not own its initial tensor). */
function makeVar(t: tf.Tensor, name: string, trainable = true): tf.Variable {
  const v = tf.variable(t, trainable, `${name}.${uid()}`);
  t.dispose();
  return v;
}

/**
 * The Bradley-Terry loss of a batch: mean_i −log σ(E_c,i − E_r,i), where E = Σ_m g_m mean_k Q'_m
 * (equal to mean_k of eq. 3's Q_mix). meanChosen/meanRejected are [B, M]: each attribute's mean
 * over the K levels. Written with softplus: −log σ(z) = softplus(−z).
 */
export function btLoss(
  gate: GateNetwork,
  promptChosen: tf.Tensor2D,
  promptRejected: tf.Tensor2D,
  meanChosen: tf.Tensor2D,
  meanRejected: tf.Tensor2D,
): tf.Scalar {
  return tf.tidy(() => tf.mean(tf.softplus(tf.neg(margin(gate, promptChosen, promptRejected, meanChosen, meanRejected)))) as tf.Scalar);
}

/** E(chosen) − E(rejected) per pair [B]. */
export function margin(
  gate: GateNetwork,
  promptChosen: tf.Tensor2D,
  promptRejected: tf.Tensor2D,
  meanChosen: tf.Tensor2D,
  meanRejected: tf.Tensor2D,
): tf.Tensor1D {
  return tf.tidy(() => {
    const ec = tf.sum(tf.mul(gate.weights(promptChosen), meanChosen), 1);
    const er = tf.sum(tf.mul(gate.weights(promptRejected), meanRejected), 1);
    return tf.sub(ec, er) as tf.Tensor1D;
  });
}

/** Preference pairs for the gate: prompt features and (debiased) attribute quantiles of both sides. */
export interface GatePairs {
  n: number;
  d: number;
  M: number;
  K: number;
  /** [n, d] prompt features of the chosen and the rejected side (the same prompt, usually). */
  promptChosen: Float32Array;
  promptRejected: Float32Array;
  /** [n, M, K] debiased attribute quantiles of the chosen and the rejected response. */
  quantilesChosen: Float32Array;
  quantilesRejected: Float32Array;
}

export interface GateTrainOptions {
  epochs?: number;          // 3
  batchSize?: number;       // 1024
  lr?: number;              // 3e-4 (peak)
  weightDecay?: number;     // 1e-3 (decoupled, AdamW)
  warmupSteps?: number;     // 0
  minLr?: number;           // 0: the cosine decays to it at the last step
  rng: Rng;                 // shuffling
  /** Evaluated (loss, accuracy) at the end of every epoch. */
  validation?: GatePairs;
  onProgress?: (m: GateProgress) => void;
}

/** One optimiser step's report (written to `qrm gate --metrics` under core's metric names: stages.ts). */
export interface GateProgress {
  /** 0-based index of the pass over the training pairs this step belongs to. */
  epoch: number;
  /** Passes over the training pairs so far, fractional: epoch + share of this pass's pairs seen (1 after the first pass). */
  passes: number;
  step: number;
  totalSteps: number;
  /** The step's Bradley-Terry loss on its mini-batch (the forward pass before the update). */
  loss: number;
  /** Share of the mini-batch's pairs ranked right (margin > 0), same forward pass. */
  accuracy: number;
  lr: number;
  /** Global norm of the step's gradient (no clipping). */
  gradNorm: number;
  /** The gate's scale beta after the update. */
  beta: number;
  /** Held-out loss and accuracy, after the last step of every pass (with validation pairs). */
  valLoss?: number;
  valAccuracy?: number;
}

export interface GateTrainResult {
  steps: number;
  /** Loss and accuracy over the whole training set after training. */
  trainLoss: number;
  trainAccuracy: number;
  valLoss?: number;
  valAccuracy?: number;
}

function checkPairs(p: GatePairs, gate: GateNetwork, what: string): void {
  const { inputDim, numAttributes } = gate.config;
  if (p.d !== inputDim) throw new QrlhfError(`${what}: prompt features have d = ${p.d}, the gate expects ${inputDim}`);
  if (p.M !== numAttributes) throw new QrlhfError(`${what}: ${p.M} attributes, the gate has ${numAttributes}`);
  if (p.promptChosen.length !== p.n * p.d || p.promptRejected.length !== p.n * p.d) {
    throw new QrlhfError(`${what}: prompt features must be [${p.n}, ${p.d}]`);
  }
  if (p.quantilesChosen.length !== p.n * p.M * p.K || p.quantilesRejected.length !== p.n * p.M * p.K) {
    throw new QrlhfError(`${what}: attribute quantiles must be [${p.n}, ${p.M}, ${p.K}]`);
  }
}

/** Mean over the K levels: [n, M, K] -> [n, M]. */
function levelMeans(q: Float32Array, n: number, M: number, K: number): Float32Array {
  const out = new Float32Array(n * M);
  for (let i = 0; i < n * M; i++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += q[i * K + k]!;
    out[i] = s / K;
  }
  return out;
}

function gatherRows(src: Float32Array, width: number, idx: ArrayLike<number>): Float32Array {
  const out = new Float32Array(idx.length * width);
  for (let i = 0; i < idx.length; i++) out.set(src.subarray(idx[i]! * width, (idx[i]! + 1) * width), i * width);
  return out;
}

/** Bradley-Terry loss and accuracy (E_c > E_r strictly) of the gate on pairs, without gradients. */
export async function evaluateGate(gate: GateNetwork, pairs: GatePairs, batchSize = 1024): Promise<{ loss: number; accuracy: number }> {
  checkPairs(pairs, gate, 'evaluateGate');
  const { n, d, M, K } = pairs;
  const mc = levelMeans(pairs.quantilesChosen, n, M, K);
  const mr = levelMeans(pairs.quantilesRejected, n, M, K);
  let loss = 0;
  let right = 0;
  for (let s = 0; s < n; s += batchSize) {
    const e = Math.min(n, s + batchSize);
    const b = e - s;
    const z = tf.tidy(() =>
      margin(
        gate,
        tf.tensor2d(pairs.promptChosen.subarray(s * d, e * d), [b, d]),
        tf.tensor2d(pairs.promptRejected.subarray(s * d, e * d), [b, d]),
        tf.tensor2d(mc.subarray(s * M, e * M), [b, M]),
        tf.tensor2d(mr.subarray(s * M, e * M), [b, M]),
      ),
    );
    const zs = await z.data();
    z.dispose();
    for (let i = 0; i < b; i++) {
      const zi = zs[i]!;
      loss += zi > 0 ? Math.log1p(Math.exp(-zi)) : -zi + Math.log1p(Math.exp(zi));
      if (zi > 0) right++;
    }
  }
  return { loss: loss / n, accuracy: right / n };
}

/**
 * Trains the gate with the Bradley-Terry loss on the mixture's expectation: AdamW (decoupled
 * weight decay on every parameter, as torch.optim.AdamW over the whole module), cosine schedule,
 * shuffled mini-batches, `epochs` passes. Each step is core's update (train/loop.ts:
 * accumulateGradients over the mini-batch as one micro-batch, applyGradients without clipping), so
 * the gate shares the trainers' gradient bookkeeping and reports the gradient norm; a non-finite
 * norm is refused, naming the step. Returns the final loss/accuracy over the training pairs.
 */
export async function trainGate(gate: GateNetwork, pairs: GatePairs, opts: GateTrainOptions): Promise<GateTrainResult> {
  checkPairs(pairs, gate, 'trainGate');
  if (gate.config.kind === 'batchnorm') {
    throw new QrlhfError('gate training: a "batchnorm" gate (the released QRM layout) is scored here, not trained; train an "mlp" gate');
  }
  if (opts.validation) checkPairs(opts.validation, gate, 'trainGate validation');
  const epochs = opts.epochs ?? 3;
  const batchSize = opts.batchSize ?? 1024;
  const lr = opts.lr ?? 3e-4;
  const weightDecay = opts.weightDecay ?? 1e-3;
  if (!Number.isInteger(epochs) || epochs < 1) throw new QrlhfError(`gate training: epochs must be an integer >= 1, got ${epochs}`);
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new QrlhfError(`gate training: batch size must be an integer >= 1, got ${batchSize}`);
  if (!(lr > 0)) throw new QrlhfError(`gate training: lr must be > 0, got ${lr}`);
  const { n, d, M, K } = pairs;
  if (n < 1) throw new QrlhfError('gate training: no preference pairs');
  const mc = levelMeans(pairs.quantilesChosen, n, M, K);
  const mr = levelMeans(pairs.quantilesRejected, n, M, K);
  const perEpoch = Math.ceil(n / batchSize);
  const totalSteps = epochs * perEpoch;
  const schedule = cosineSchedule({ lr, warmupSteps: opts.warmupSteps ?? 0, totalSteps, minLr: opts.minLr ?? 0 });
  const opt = new AdamW(gate.variables, { lr, weightDecay });
  let step = 0;
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = opts.rng.shuffle(Array.from({ length: n }, (_, i) => i));
      for (let s = 0; s < n; s += batchSize) {
        const idx = order.slice(s, Math.min(n, s + batchSize));
        const b = idx.length;
        const stepLr = schedule(step);
        let z: tf.Tensor | null = null;
        // core's update (train/loop.ts): the mini-batch is one micro-batch, no clipping
        const { grads, loss } = await accumulateGradients([idx], (rows) => {
          const zz = margin(
            gate,
            tf.tensor2d(gatherRows(pairs.promptChosen, d, rows), [b, d]),
            tf.tensor2d(gatherRows(pairs.promptRejected, d, rows), [b, d]),
            tf.tensor2d(gatherRows(mc, M, rows), [b, M]),
            tf.tensor2d(gatherRows(mr, M, rows), [b, M]),
          );
          z = tf.keep(zz);
          return tf.mean(tf.softplus(tf.neg(zz))) as tf.Scalar;
        }, gate.variables);
        const gradNorm = await applyGradients(opt, grads, stepLr, 0);
        if (!Number.isFinite(gradNorm)) {
          (z as tf.Tensor | null)?.dispose();
          throw new QrlhfError(`gate training: step ${step + 1}: the gradient norm is ${gradNorm} (loss ${loss}); the update was skipped. Check the features for huge values, or lower --lr`);
        }
        const zs = z ? await (z as tf.Tensor).data() : new Float32Array(0);
        (z as tf.Tensor | null)?.dispose();
        let right = 0;
        for (let i = 0; i < zs.length; i++) if (zs[i]! > 0) right++;
        step++;
        const last = s + batchSize >= n;
        const m: GateProgress = { epoch, passes: epoch + Math.min(n, s + batchSize) / n, step, totalSteps, loss, accuracy: right / b, lr: stepLr, gradNorm, beta: await gate.beta() };
        if (last && opts.validation) {
          const v = await evaluateGate(gate, opts.validation, batchSize);
          m.valLoss = v.loss;
          m.valAccuracy = v.accuracy;
        }
        opts.onProgress?.(m);
      }
    }
  } finally {
    opt.dispose();
  }
  const tr = await evaluateGate(gate, pairs, batchSize);
  const res: GateTrainResult = { steps: step, trainLoss: tr.loss, trainAccuracy: tr.accuracy };
  if (opts.validation) {
    const v = await evaluateGate(gate, opts.validation, batchSize);
    res.valLoss = v.loss;
    res.valAccuracy = v.accuracy;
  }
  return res;
}

/** How the attribute distributions are combined into the reward distribution. */
export type MixtureMode = 'eq3' | 'mixture';
export const MIXTURE_MODES: readonly MixtureMode[] = ['eq3', 'mixture'];

/**
 * Mixes attribute quantiles [n, M, K] with gate weights [n, M] into [n, K] reward quantiles.
 *
 * - 'eq3' (default, the paper's equation 3): Q_mix(tau_k) = Σ_m g_m Q'_m(tau_k), a weighted average
 *   of quantile *functions*. With g >= 0 and non-decreasing inputs it is non-decreasing; the result
 *   is sorted anyway (a no-op then; it keeps the mean) so the contract holds for any sign of beta.
 * - 'mixture': the quantiles of the mixture *distribution* Σ_m w_m P_m (w = g / beta, the softmax),
 *   scaled by beta. P_m is the piecewise-linear distribution that interpolates attribute m's
 *   quantiles: its CDF passes through (q_{m,k}, tau_k) and is linear in between, with atoms of
 *   mass tau_1 at q_{m,1} and 1 − tau_K at q_{m,K} (no extrapolation beyond the extreme
 *   quantiles). Each level is found by bisection on the mixture CDF. Not what the paper computes.
 */
export function mixQuantiles(
  attrQ: Float32Array,
  g: Float32Array,
  n: number,
  M: number,
  taus: Float32Array,
  mode: MixtureMode = 'eq3',
): Float32Array {
  const K = taus.length;
  if (attrQ.length !== n * M * K) throw new QrlhfError(`mixQuantiles: expected [${n}, ${M}, ${K}] attribute quantiles, got ${attrQ.length} values`);
  if (g.length !== n * M) throw new QrlhfError(`mixQuantiles: expected [${n}, ${M}] gate weights, got ${g.length} values`);
  const out = new Float32Array(n * K);
  const row = new Float64Array(K);
  for (let i = 0; i < n; i++) {
    if (mode === 'eq3') {
      row.fill(0);
      for (let m = 0; m < M; m++) {
        const gm = g[i * M + m]!;
        const base = (i * M + m) * K;
        for (let k = 0; k < K; k++) row[k] += gm * attrQ[base + k]!;
      }
      row.sort();
    } else if (mode === 'mixture') {
      mixtureRow(attrQ.subarray(i * M * K, (i + 1) * M * K), g.subarray(i * M, (i + 1) * M), M, taus, row);
    } else {
      throw new QrlhfError(`mixture mode must be "eq3" or "mixture", got "${String(mode)}"`);
    }
    for (let k = 0; k < K; k++) out[i * K + k] = row[k]!;
  }
  return out;
}

/** CDF at x of the piecewise-linear distribution through (q_k, tau_k), atoms at both ends. */
function plCdf(q: Float32Array, off: number, taus: Float32Array, x: number): number {
  const K = taus.length;
  if (x < q[off]!) return 0;
  if (x >= q[off + K - 1]!) return 1;
  let lo = 0;
  let hi = K - 1; // q[lo] <= x < q[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (q[off + mid]! <= x) lo = mid;
    else hi = mid;
  }
  const a = q[off + lo]!;
  const b = q[off + hi]!;
  return taus[lo]! + ((taus[hi]! - taus[lo]!) * (x - a)) / (b - a);
}

function mixtureRow(q: Float32Array, g: Float32Array, M: number, taus: Float32Array, out: Float64Array): void {
  const K = taus.length;
  let beta = 0;
  for (let m = 0; m < M; m++) beta += g[m]!;
  if (beta === 0 || !Number.isFinite(beta)) {
    out.fill(beta === 0 ? 0 : NaN);
    return;
  }
  // Each attribute's quantiles must be non-decreasing for P_m to be a distribution.
  const qs = new Float32Array(q.length);
  for (let m = 0; m < M; m++) {
    const r = q.slice(m * K, (m + 1) * K).sort();
    qs.set(r, m * K);
  }
  let lo0 = Infinity;
  let hi0 = -Infinity;
  for (let m = 0; m < M; m++) {
    lo0 = Math.min(lo0, qs[m * K]!);
    hi0 = Math.max(hi0, qs[m * K + K - 1]!);
  }
  const cdf = (x: number): number => {
    let s = 0;
    for (let m = 0; m < M; m++) s += (g[m]! / beta) * plCdf(qs, m * K, taus, x);
    return s;
  };
  for (let k = 0; k < K; k++) {
    // beta < 0 reverses the order: the tau-quantile of beta·Y is beta times Y's (1 − tau)-quantile.
    const t = beta > 0 ? taus[k]! : 1 - taus[k]!;
    let lo = lo0;
    let hi = hi0;
    if (cdf(lo) >= t) hi = lo;
    for (let it = 0; it < 200 && hi - lo > 1e-12 * Math.max(1, Math.abs(hi), Math.abs(lo)); it++) {
      const mid = 0.5 * (lo + hi);
      if (cdf(mid) >= t) hi = mid;
      else lo = mid;
    }
    out[k] = beta * hi;
  }
  out.sort();
}

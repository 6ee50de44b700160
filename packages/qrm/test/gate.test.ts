import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { AdamW, QrlhfError, Rng, cosineSchedule } from '@qrlhf/core';
import { gateF64, toF64, type F64Params } from './reference.js';
import { GateNetwork, btLoss, evaluateGate, margin, mixQuantiles, trainGate, type GatePairs } from '@qrlhf/qrm';

function lossF64(p: F64Params, pairs: GatePairs, nLayers: number, T: number): number {
  const { n, d, M, K } = pairs;
  let L = 0;
  for (let i = 0; i < n; i++) {
    const gc = gateF64(p, Array.from(pairs.promptChosen.subarray(i * d, (i + 1) * d)), nLayers, T);
    const gr = gateF64(p, Array.from(pairs.promptRejected.subarray(i * d, (i + 1) * d)), nLayers, T);
    // E = mean_k Σ_m g_m Q_m(tau_k), straight from eq. 3
    let ec = 0;
    let er = 0;
    for (let k = 0; k < K; k++) {
      let qc = 0;
      let qr = 0;
      for (let m = 0; m < M; m++) {
        qc += gc[m]! * pairs.quantilesChosen[(i * M + m) * K + k]!;
        qr += gr[m]! * pairs.quantilesRejected[(i * M + m) * K + k]!;
      }
      ec += qc / K;
      er += qr / K;
    }
    L += Math.log(1 + Math.exp(-(ec - er)));
  }
  return L / n;
}

function randomPairs(rng: Rng, n: number, d: number, M: number, K: number): GatePairs {
  const f = (len: number, s = 1) => Float32Array.from({ length: len }, () => s * rng.normal());
  const sortedQ = () => {
    const q = f(n * M * K);
    for (let r = 0; r < n * M; r++) q.subarray(r * K, (r + 1) * K).sort();
    return q;
  };
  return { n, d, M, K, promptChosen: f(n * d), promptRejected: f(n * d), quantilesChosen: sortedQ(), quantilesRejected: sortedQ() };
}

test.serial('BT loss gradient w.r.t. every gate parameter matches central finite differences of a float64 forward', async (t) => {
  const rng = new Rng(3);
  const d = 4, M = 3, K = 5, n = 6;
  const gate = GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: 5, numHidden: 3 }, rng);
  // make the softmax far from uniform so the gradient is not trivially small
  gate.variables['beta']!.assign(tf.tensor1d([1.7]));
  const pairs = randomPairs(rng, n, d, M, K);
  const mean = (q: Float32Array) => {
    const out = new Float32Array(n * M);
    for (let r = 0; r < n * M; r++) for (let k = 0; k < K; k++) out[r] += q[r * K + k]! / K;
    return tf.tensor2d(out, [n, M]);
  };
  const before = tf.memory().numTensors;
  const { value, grads } = tf.variableGrads(() =>
    btLoss(gate, tf.tensor2d(pairs.promptChosen, [n, d]), tf.tensor2d(pairs.promptRejected, [n, d]), mean(pairs.quantilesChosen), mean(pairs.quantilesRejected)),
  );
  const file = await gate.toTensors();
  const p64 = toF64(file);
  const L0 = lossF64(p64, pairs, 4, 10);
  t.true(Math.abs(value.dataSync()[0]! - L0) < 1e-5, `loss ${value.dataSync()[0]} vs float64 ${L0}`);
  let checked = 0;
  for (const [name, v] of Object.entries(gate.variables)) {
    const g = grads[v.name]!.dataSync(); // keyed by the tfjs variable name; in-memory layout: weights [in, out]
    const P = p64[name]!;
    for (let idx = 0; idx < P.data.length; idx++) {
      const h = 1e-6;
      const orig = P.data[idx]!;
      P.data[idx] = orig + h;
      const Lp = lossF64(p64, pairs, 4, 10);
      P.data[idx] = orig - h;
      const Lm = lossF64(p64, pairs, 4, 10);
      P.data[idx] = orig;
      const fd = (Lp - Lm) / (2 * h);
      // file index [out, in] -> memory index [in, out]
      let mi = idx;
      if (name.endsWith('.weight')) {
        const [out, inn] = P.shape as [number, number];
        const o = Math.floor(idx / inn);
        const j = idx % inn;
        mi = j * out + o;
      }
      const an = g[mi]!;
      t.true(Math.abs(an - fd) <= 2e-5 + 2e-3 * Math.abs(fd), `${name}[${idx}]: autodiff ${an} vs finite difference ${fd}`);
      checked++;
    }
    t.is(v.size, P.data.length);
  }
  t.true(checked > 100);
  value.dispose();
  for (const g of Object.values(grads)) g.dispose();
  t.true(tf.memory().numTensors <= before, 'no tensors leaked');
  gate.dispose();
});

test.serial('training on pairs decided by one attribute raises accuracy and puts the weight there; memory stays flat', async (t) => {
  const rng = new Rng(11);
  const n = 512, d = 6, M = 3, K = 5;
  const pairs = randomPairs(rng, n, d, M, K);
  // attribute 1 decides: swap the two sides wherever attribute 1's mean prefers the rejected one;
  // attributes 0 and 2 are large noise that hides it under uniform weights
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < K; k++) {
      for (const m of [0, 2]) {
        pairs.quantilesChosen[(i * M + m) * K + k]! *= 3;
        pairs.quantilesRejected[(i * M + m) * K + k]! *= 3;
      }
    }
    let mc = 0, mr = 0;
    for (let k = 0; k < K; k++) {
      mc += pairs.quantilesChosen[(i * M + 1) * K + k]!;
      mr += pairs.quantilesRejected[(i * M + 1) * K + k]!;
    }
    if (mc < mr) {
      for (let k = 0; k < K; k++) {
        const a = (i * M + 1) * K + k;
        [pairs.quantilesChosen[a], pairs.quantilesRejected[a]] = [pairs.quantilesRejected[a]!, pairs.quantilesChosen[a]!];
      }
    }
  }
  const gate = GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: 16 }, new Rng(5));
  const start = await evaluateGate(gate, pairs);
  const seen: number[] = [];
  let tensors = -1;
  const res = await trainGate(gate, pairs, {
    epochs: 30, batchSize: 64, lr: 0.02, weightDecay: 1e-3, rng: new Rng(9),
    onProgress: (m) => {
      seen.push(m.loss);
      if (m.step === 10) tensors = tf.memory().numTensors;
      if (m.step > 10) t.is(tf.memory().numTensors, tensors, `tensor count flat at step ${m.step}`);
    },
  });
  t.is(res.steps, 30 * 8);
  t.is(seen.length, res.steps);
  t.true(res.trainAccuracy > start.accuracy + 0.15, `accuracy ${start.accuracy} -> ${res.trainAccuracy}`);
  t.true(res.trainAccuracy > 0.9, `accuracy ${res.trainAccuracy}`);
  t.true(res.trainLoss < start.loss);
  const g = await gate.predict(pairs.promptChosen, n);
  let w = [0, 0, 0];
  for (let i = 0; i < n; i++) for (let m = 0; m < M; m++) w[m] += g[i * M + m]! / n;
  const beta = await gate.beta();
  w = w.map((x) => x / beta);
  t.true(w[1]! > 0.8, `mean softmax weights ${w.map((x) => x.toFixed(3)).join(', ')}`);
  gate.dispose();
});

test.serial('save layout round trip: fromTensors(toTensors()) gives the same gate weights', async (t) => {
  const gate = GateNetwork.create({ inputDim: 3, numAttributes: 2, hiddenSize: 4, numHidden: 2 }, new Rng(1));
  const x = Float32Array.from([0.1, -2, 3, 1, 1, 1]);
  const copy = GateNetwork.fromTensors(gate.config, await gate.toTensors());
  t.deepEqual(Array.from(await copy.predict(x, 2)), Array.from(await gate.predict(x, 2)));
  const bad = await gate.toTensors();
  bad['layers.0.weight'] = { dtype: 'F32', shape: [3, 4], data: new Float32Array(12) };
  t.throws(() => GateNetwork.fromTensors(gate.config, bad, 'g.safetensors'), { message: /g\.safetensors: tensor "layers\.0\.weight" has shape \[3, 4\], expected \[4, 3\]/ });
  gate.dispose();
  copy.dispose();
});

const taus = Float32Array.from({ length: 9 }, (_, k) => (k + 1) / 10);

test.serial('eq. 3 mixing is the weighted sum of quantile functions', async (t) => {
  const rng = new Rng(2);
  const n = 3, M = 4, K = taus.length;
  const q = Float32Array.from({ length: n * M * K }, () => rng.normal());
  for (let r = 0; r < n * M; r++) q.subarray(r * K, (r + 1) * K).sort();
  const g = Float32Array.from({ length: n * M }, () => rng.next());
  const out = mixQuantiles(q, g, n, M, taus);
  for (let i = 0; i < n; i++) for (let k = 0; k < K; k++) {
    let ref = 0;
    for (let m = 0; m < M; m++) ref += g[i * M + m]! * q[(i * M + m) * K + k]!;
    t.true(Math.abs(out[i * K + k]! - ref) < 1e-5);
  }
});

/** Reference for the true mixture: pool a dense deterministic sample of each P_m (inverse CDF on a
 *  regular grid of u) in proportion to w_m and read the empirical quantile. */
function mixtureByQuadrature(qs: number[][], w: number[], tauGrid: number[], N = 400000): number[] {
  const pts: number[] = [];
  qs.forEach((q, m) => {
    const Nm = Math.round(w[m]! * N);
    for (let i = 0; i < Nm; i++) {
      const u = (i + 0.5) / Nm;
      let x: number;
      if (u <= tauGrid[0]!) x = q[0]!;
      else if (u >= tauGrid[tauGrid.length - 1]!) x = q[q.length - 1]!;
      else {
        let k = 0;
        while (tauGrid[k + 1]! < u) k++;
        x = q[k]! + ((q[k + 1]! - q[k]!) * (u - tauGrid[k]!)) / (tauGrid[k + 1]! - tauGrid[k]!);
      }
      pts.push(x);
    }
  });
  pts.sort((a, b) => a - b);
  return tauGrid.map((tau) => pts[Math.min(pts.length - 1, Math.ceil(tau * pts.length) - 1)]!);
}

test.serial('the true-mixture option gives the quantiles of the mixture distribution', async (t) => {
  const tauGrid = Array.from({ length: 9 }, (_, k) => (k + 1) / 10);
  // one attribute: the mixture is itself, its quantiles come back exactly
  const single = Float32Array.from([0, 1, 2, 2, 2, 5, 6, 7, 9]);
  const one = mixQuantiles(single, Float32Array.from([1]), 1, 1, taus, 'mixture');
  for (let k = 0; k < 9; k++) t.true(Math.abs(one[k]! - single[k]!) < 1e-6);
  // two well separated attributes (a bimodal mixture) with weights .35/.65, scaled by beta = 2
  const a = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
  const b = [5, 5.5, 6, 6.2, 6.4, 7, 7.5, 8, 9];
  const q = Float32Array.from([...a, ...b]);
  const out = mixQuantiles(q, Float32Array.from([0.7, 1.3]), 1, 2, taus, 'mixture');
  const ref = mixtureByQuadrature([a, b], [0.35, 0.65], tauGrid);
  for (let k = 0; k < 9; k++) t.true(Math.abs(out[k]! - 2 * ref[k]!) < 2e-3, `tau ${tauGrid[k]}: ${out[k]} vs ${2 * ref[k]!}`);
  // and it differs from eq. 3, which averages the quantile functions instead
  const eq3 = mixQuantiles(q, Float32Array.from([0.7, 1.3]), 1, 2, taus);
  t.true(Math.abs(eq3[0]! - out[0]!) > 1);
});

/**
 * The update trainGate made before it went through core's accumulateGradients/applyGradients:
 * tf.variableGrads over every trainable variable, re-keyed by hand, AdamW.step at the cosine lr.
 * Same shuffling, schedule and mean over the levels (float64 sum, stored as float32).
 */
async function handWrittenTrain(gate: GateNetwork, p: GatePairs, o: { epochs: number; batchSize: number; lr: number; weightDecay: number; warmupSteps: number; rng: Rng }): Promise<number[]> {
  const { n, d, M, K } = p;
  const means = (q: Float32Array) => Float32Array.from({ length: n * M }, (_, i) => {
    let s = 0;
    for (let k = 0; k < K; k++) s += q[i * K + k]!;
    return s / K;
  });
  const mc = means(p.quantilesChosen);
  const mr = means(p.quantilesRejected);
  const rows = (src: Float32Array, w: number, idx: number[]) => {
    const out = new Float32Array(idx.length * w);
    idx.forEach((r, i) => out.set(src.subarray(r * w, (r + 1) * w), i * w));
    return out;
  };
  const perEpoch = Math.ceil(n / o.batchSize);
  const schedule = cosineSchedule({ lr: o.lr, warmupSteps: o.warmupSteps, totalSteps: o.epochs * perEpoch, minLr: 0 });
  const opt = new AdamW(gate.variables, { lr: o.lr, weightDecay: o.weightDecay });
  const losses: number[] = [];
  let step = 0;
  for (let e = 0; e < o.epochs; e++) {
    const order = o.rng.shuffle(Array.from({ length: n }, (_, i) => i));
    for (let s = 0; s < n; s += o.batchSize) {
      const idx = order.slice(s, Math.min(n, s + o.batchSize));
      const b = idx.length;
      const lr = schedule(step++);
      const value = tf.tidy(() => {
        const pc = tf.tensor2d(rows(p.promptChosen, d, idx), [b, d]);
        const pr = tf.tensor2d(rows(p.promptRejected, d, idx), [b, d]);
        const ec = tf.tensor2d(rows(mc, M, idx), [b, M]);
        const er = tf.tensor2d(rows(mr, M, idx), [b, M]);
        const { value, grads } = tf.variableGrads(() => tf.mean(tf.softplus(tf.neg(margin(gate, pc, pr, ec, er)))) as tf.Scalar);
        const byKey: Record<string, tf.Tensor> = {};
        for (const [k, v] of Object.entries(gate.variables)) byKey[k] = grads[v.name]!;
        opt.step(byKey, lr);
        return value;
      });
      losses.push((await value.data())[0]!);
      value.dispose();
    }
  }
  opt.dispose();
  return losses;
}

test.serial("trainGate's update (core's accumulateGradients + applyGradients) is bit-identical to a hand-written variableGrads + AdamW step", async (t) => {
  const rng = new Rng(3);
  const pairs = randomPairs(rng, 70, 5, 3, 4);
  const o = { epochs: 3, batchSize: 16, lr: 0.01, weightDecay: 1e-3, warmupSteps: 2 }; // 5 steps a pass, the last one of 6 pairs
  const cfg = { inputDim: 5, numAttributes: 3, hiddenSize: 8, numHidden: 2 };
  const a = GateNetwork.create(cfg, new Rng(5));
  const b = GateNetwork.create(cfg, new Rng(5));
  const seen: number[] = [];
  await trainGate(a, pairs, { ...o, rng: new Rng(9), onProgress: (m) => seen.push(m.loss) });
  const ref = await handWrittenTrain(b, pairs, { ...o, rng: new Rng(9) });
  t.deepEqual(seen, ref, 'the same loss at every step');
  t.is(ref.length, 15);
  for (const [k, v] of Object.entries(a.variables)) {
    const x = (await v.data()) as Float32Array;
    const y = (await b.variables[k]!.data()) as Float32Array;
    t.deepEqual(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), new Uint8Array(y.buffer, y.byteOffset, y.byteLength), `${k} bit for bit`);
  }
  t.not(await a.beta(), 1, 'the weights moved');
  a.dispose();
  b.dispose();
});

test.serial('a non-finite gradient is refused, naming the step, instead of poisoning the weights', async (t) => {
  const cfg = { inputDim: 5, numAttributes: 3, hiddenSize: 8, numHidden: 1 };
  // what a finite one-step run leaves behind (core's AdamW keeps its zero initial moments' tensors), as the baseline
  const ok = GateNetwork.create(cfg, new Rng(5));
  const okBefore = tf.memory().numTensors;
  await trainGate(ok, randomPairs(new Rng(4), 8, 5, 3, 4), { epochs: 1, batchSize: 8, rng: new Rng(1) });
  const okLeft = tf.memory().numTensors - okBefore;
  ok.dispose();
  const pairs = randomPairs(new Rng(4), 8, 5, 3, 4);
  pairs.promptChosen[3 * 5] = Number.NaN;
  const gate = GateNetwork.create(cfg, new Rng(5));
  const before = Array.from((await gate.variables['beta']!.data()) as Float32Array);
  const before0 = tf.memory().numTensors;
  const e = await t.throwsAsync(trainGate(gate, pairs, { epochs: 1, batchSize: 8, rng: new Rng(1) }), { instanceOf: QrlhfError });
  t.regex(e!.message, /step 1: the gradient norm is NaN/);
  t.deepEqual(Array.from((await gate.variables['beta']!.data()) as Float32Array), before, 'no update made');
  t.is(tf.memory().numTensors - before0, okLeft, 'the refused step leaves no more tensors than a finite run (its margins and gradients are freed)');
  gate.dispose();
});

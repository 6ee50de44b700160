import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { AdamW, Rng, withLoraDisabled, type LlamaModel } from '@qrlhf/core';
import { makeUtility } from '@qrlhf/qrm';
import {
  rlooDefaults,
  RlooLearner,
  klToken,
  leaveOneOutAdvantages,
  ppoClipLoss,
  ppoStatSums,
  reinforceLoss,
  rlooRewards,
  sequenceKl,
  type RlPrompt,
} from '../src/index.js';
import { scaledRandomModel, stubReward, tinyConfig, tokenizerFor, TAUS, stubQuantiles } from './fixture.js';

// ---- SPEC §6 written out directly, in float64 --------------------------------------------------

/** KL(pi||pi_ref) per-token estimate, written from its definition with r = pi_ref / pi. */
function refKlToken(logp: number, logpRef: number, est: 'k1' | 'k3'): number {
  if (est === 'k1') return logp - logpRef;
  const r = Math.exp(logpRef) / Math.exp(logp);
  return r - 1 - Math.log(r);
}

/** R_i, A_i and the REINFORCE loss for groups of k, straight from the formulas. */
function refRloo(U: number[], logp: number[][], logpRef: number[][], beta: number, k: number, est: 'k1' | 'k3') {
  const R = U.map((u, i) => u - beta * logp[i]!.reduce((s, lp, t) => s + refKlToken(lp, logpRef[i]![t]!, est), 0));
  const A = R.map((r, i) => {
    const g = Math.floor(i / k) * k;
    const others = R.slice(g, g + k).filter((_, j) => g + j !== i);
    return r - others.reduce((a, b) => a + b, 0) / (k - 1);
  });
  const loss = -A.reduce((s, a, i) => s + a * logp[i]!.reduce((x, y) => x + y, 0), 0) / U.length;
  return { R, A, loss };
}

const close = (a: number, b: number, tol = 1e-5) => Math.abs(a - b) <= tol * (1 + Math.abs(b));

// Hand-made: 8 responses with 1..3 tokens each.
const U8 = [0.9, -0.3, 0.25, 0.4, -1.2, 0.05, 0.7, 0.1];
const LP = [[-0.5, -1.2], [-2.0], [-0.1, -0.3, -0.9], [-1.5, -0.2], [-0.7], [-0.05, -3.0], [-1.1, -0.4, -0.6], [-0.8]];
const LPREF = [[-0.7, -1.0], [-1.5], [-0.4, -0.3, -0.5], [-1.0, -0.9], [-0.9], [-0.2, -2.5], [-1.4, -0.1, -0.6], [-0.3]];

test('k1 and k3 per-token estimates match their definitions; k3 >= 0 and zero only at d = 0', (t) => {
  for (const [lp, lr] of [[-0.5, -0.7], [-2, -1.5], [-0.1, -0.1], [-3, -0.01]] as const) {
    t.true(close(klToken(lp - lr, 'k1'), refKlToken(lp, lr, 'k1'), 1e-12));
    t.true(close(klToken(lp - lr, 'k3'), refKlToken(lp, lr, 'k3'), 1e-9));
    t.true(klToken(lp - lr, 'k3') >= 0);
  }
  t.is(klToken(0, 'k3'), 0);
  // d = log 2: r = 1/2, k3 = -1/2 + log 2
  t.true(close(klToken(Math.log(2), 'k3'), Math.log(2) - 0.5, 1e-12));
});

for (const k of [2, 4]) {
  for (const est of ['k1', 'k3'] as const) {
    test(`advantages and loss match SPEC §6 on hand-made numbers (k = ${k}, ${est})`, (t) => {
      const beta = 0.3;
      const ref = refRloo(U8, LP, LPREF, beta, k, est);
      const kl = LP.map((lp, i) => sequenceKl(lp, LPREF[i]!, est));
      const R = rlooRewards(U8, kl, beta);
      const A = leaveOneOutAdvantages(R, k);
      for (let i = 0; i < 8; i++) {
        t.true(close(R[i]!, ref.R[i]!, 1e-12), `R_${i}`);
        t.true(close(A[i]!, ref.A[i]!, 1e-12), `A_${i}`);
      }
      // within each group the advantages sum to zero; with k = 2, A_1 = R_1 - R_2 = -A_2
      for (let g = 0; g < 8; g += k) t.true(Math.abs(A.slice(g, g + k).reduce((a, b) => a + b, 0)) < 1e-12);
      if (k === 2) for (let g = 0; g < 8; g += 2) t.true(close(A[g]!, R[g]! - R[g + 1]!, 1e-12) && close(A[g + 1]!, -A[g]!, 1e-12));
      // the loss as a tensor: per-token log-probs padded into [N, T] with zeros
      const T = 3;
      const lpPad = new Float32Array(8 * T);
      LP.forEach((lp, i) => lpPad.set(lp, i * T));
      const loss = tf.tidy(() => reinforceLoss(tf.tensor2d(lpPad, [8, T]), tf.tensor1d(Float32Array.from(A)), 8).dataSync()[0]!);
      t.true(close(loss, ref.loss, 1e-5), `loss ${loss} vs ${ref.loss}`);
      // two micro-batches summed give the same loss
      const half = tf.tidy(
        () =>
          reinforceLoss(tf.tensor2d(lpPad.slice(0, 4 * T), [4, T]), tf.tensor1d(Float32Array.from(A.slice(0, 4))), 8).dataSync()[0]! +
          reinforceLoss(tf.tensor2d(lpPad.slice(4 * T), [4, T]), tf.tensor1d(Float32Array.from(A.slice(4))), 8).dataSync()[0]!,
      );
      t.true(close(half, ref.loss, 1e-5));
    });
  }
}

test('by hand, k = 2: U = (1, 0), beta = 0 gives A = (1, -1); k = 4: A_1 = R_1 - mean of the others', (t) => {
  t.deepEqual(Array.from(leaveOneOutAdvantages([1, 0], 2)), [1, -1]);
  const A = leaveOneOutAdvantages([4, 1, 2, 3], 4);
  t.deepEqual(Array.from(A), [4 - 2, 1 - 3, 2 - 8 / 3, 3 - 7 / 3]);
  t.throws(() => leaveOneOutAdvantages([1, 2, 3], 2), { message: /multiple of k/ });
  t.throws(() => leaveOneOutAdvantages([1, 2], 1), { message: /k >= 2/ });
});

test('the PPO-clipped loss matches its formula, and equals the REINFORCE loss in value and gradient at ratio 1', (t) => {
  const A = [0.8, -0.8, 1.5, -0.2];
  const lpOld = [[-0.5, -1.0], [-0.3, 0], [-2.0, -0.1], [-0.6, -0.9]];
  const mask = [[1, 1], [1, 0], [1, 1], [1, 1]];
  const lpNew = [[-0.2, -1.3], [-0.9, 0], [-1.0, -0.1], [-0.6, -0.4]];
  const eps = 0.2;
  let ref = 0;
  lpNew.forEach((row, i) =>
    row.forEach((lp, j) => {
      if (!mask[i]![j]) return;
      const rho = Math.exp(lp - lpOld[i]![j]!);
      ref += Math.min(rho * A[i]!, Math.min(Math.max(rho, 1 - eps), 1 + eps) * A[i]!);
    }),
  );
  ref = -ref / 4;
  const got = tf.tidy(() => ppoClipLoss(tf.tensor2d(lpNew), tf.tensor2d(lpOld), tf.tensor2d(mask), tf.tensor1d(A), 4, eps).dataSync()[0]!);
  t.true(close(got, ref, 1e-5), `${got} vs ${ref}`);
  // gradient w.r.t. log-probs at ratio 1: d/dlp_t = -A_i mask / N for both losses
  const x = tf.tensor2d(lpOld);
  const gPpo = tf.grad((lp: tf.Tensor) => ppoClipLoss(lp as tf.Tensor2D, tf.tensor2d(lpOld), tf.tensor2d(mask), tf.tensor1d(A), 4, eps))(x);
  const gRe = tf.grad((lp: tf.Tensor) => reinforceLoss(tf.mul(lp, tf.tensor2d(mask)) as tf.Tensor2D, tf.tensor1d(A), 4))(x);
  const a = gPpo.dataSync();
  const b = gRe.dataSync();
  for (let i = 0; i < a.length; i++) t.true(close(a[i]!, b[i]!, 1e-6) && close(a[i]!, (-A[Math.floor(i / 2)]! * mask[Math.floor(i / 2)]![i % 2]!) / 4, 1e-6));
  tf.dispose([x, gPpo, gRe]);
});

/** ppo/clipfrac and ppo/approx_kl from their definitions, in float64: ratio = exp(lp - lpOld) over the masked tokens. */
function refPpoStats(lpNew: number[][], lpOld: number[][], mask: number[][], eps: number): { clipfrac: number; approxKl: number; tokens: number } {
  let clipped = 0;
  let kl = 0;
  let tokens = 0;
  lpNew.forEach((row, i) =>
    row.forEach((lp, j) => {
      if (!mask[i]![j]) return;
      const rho = Math.exp(lp) / Math.exp(lpOld[i]![j]!);
      if (rho < 1 - eps || rho > 1 + eps) clipped++;
      kl += rho - 1 - Math.log(rho);
      tokens++;
    }),
  );
  return { clipfrac: clipped / tokens, approxKl: kl / tokens, tokens };
}

test('ppo/clipfrac and ppo/approx_kl: the micro-batch sums match a float64 computation and a hand case', (t) => {
  const lpOld = [[-0.5, -1.0], [-0.3, 0], [-2.0, -0.1], [-0.6, -0.9]];
  const mask = [[1, 1], [1, 0], [1, 1], [1, 1]];
  const lpNew = [[-0.2, -1.3], [-0.9, 5], [-1.0, -0.1], [-0.6, -0.4]];
  const eps = 0.2;
  const ref = refPpoStats(lpNew, lpOld, mask, eps);
  // by hand: ratios e^.3, e^-.3, e^-.6, (masked), e^1, 1, 1, e^.5 → 5 of 7 outside [0.8, 1.2]
  t.is(ref.tokens, 7);
  t.true(close(ref.clipfrac, 5 / 7, 1e-12));
  const [c, k] = tf.tidy(() => Array.from(ppoStatSums(tf.tensor2d(lpNew), tf.tensor2d(lpOld), tf.tensor2d(mask), eps).dataSync()));
  t.is(c, 5);
  t.true(close(k! / 7, ref.approxKl, 1e-5), `${k! / 7} vs ${ref.approxKl}`);
  // one token at ratio 2: k3 = (2 - 1) - log 2
  const one = tf.tidy(() => Array.from(ppoStatSums(tf.tensor2d([[Math.log(2)]]), tf.tensor2d([[0]]), tf.tensor2d([[1]]), 0.2).dataSync()));
  t.is(one[0], 1);
  t.true(close(one[1]!, 1 - Math.log(2), 1e-6));
  // ratio 1 everywhere: nothing clipped, approximate KL 0
  const same = tf.tidy(() => Array.from(ppoStatSums(tf.tensor2d(lpOld), tf.tensor2d(lpOld), tf.tensor2d(mask), eps).dataSync()));
  t.deepEqual(same, [0, 0]);
});

/** log-softmax of the model's logits for one unpadded sequence, in float64: [T, V]. */
function logSoftmax64(model: LlamaModel, ids: number[], temperature: number): number[][] {
  const logits = tf.tidy(() => model.forward(tf.tensor2d([ids], [1, ids.length], 'int32')).arraySync() as number[][][])[0]!;
  return logits.map((row) => {
    const z = row.map((x) => x / temperature);
    const m = Math.max(...z);
    const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0));
    return z.map((x) => x - lse);
  });
}

for (const [k, est] of [[2, 'k1'], [4, 'k3']] as const) {
  test(`a collected batch: log-probs, KL, rewards, advantages, entropy and the loss agree with a float64 recomputation (k = ${k}, ${est})`, async (t) => {
    const tok = tokenizerFor();
    const model = scaledRandomModel(tinyConfig(), 3, 0.5);
    const adapter = model.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj'] }, new Rng(1));
    // move the adapter away from B = 0 so the policy differs from the reference
    const prng = new Rng(9);
    for (const v of Object.values(adapter.variables)) v.assign(tf.tidy(() => tf.add(v, tf.mul(tf.randomNormal(v.shape, 0, 1, 'float32', prng.seed32()), 0.3))));
    const opt = new AdamW(adapter.variables, { lr: 0 });
    const temperature = 0.8;
    const learner = new RlooLearner({
      model,
      tokenizer: tok,
      reward: stubReward(),
      utility: await makeUtility({ name: 'exponential', lambda: 2 }),
      settings: { ...rlooDefaults(), k, klEstimator: est, betaKl: 0.4, maxNewTokens: 5, temperature, microBatchSize: 3, generationBatchSize: 5, missingEosPenalty: 0.25 },
      rng: new Rng(5),
      optimizer: opt,
    });
    const prompts: RlPrompt[] = ['\n\nHuman: hi?\n\nAssistant:', '\n\nHuman: tea or jazz?\n\nAssistant:', '\n\nHuman: moss\n\nAssistant:'].map((text) => ({
      text,
      ids: [tok.bosId, ...tok.encode(text)],
    }));
    const b = await learner.collect(prompts);
    t.is(b.responses.length, 3 * k);
    let lossRef = 0;
    const R: number[] = [];
    let entTotal = 0;
    let tokTotal = 0;
    for (let i = 0; i < b.responses.length; i++) {
      const p = prompts[Math.floor(i / k)]!.ids;
      const y = b.responses[i]!;
      const seq = [...p, ...y];
      const pol = logSoftmax64(model, seq, temperature);
      const ref = withLoraDisabled(model, () => logSoftmax64(model, seq, temperature));
      const lp = y.map((tokId, j) => pol[p.length - 1 + j]![tokId]!);
      const lr = y.map((tokId, j) => ref[p.length - 1 + j]![tokId]!);
      y.forEach((_, j) => {
        const row = pol[p.length - 1 + j]!;
        entTotal -= row.reduce((s, l) => s + Math.exp(l) * l, 0);
        tokTotal++;
      });
      lp.forEach((x, j) => t.true(Math.abs(x - b.logp[i]![j]!) < 2e-4, `logp ${i},${j}: ${x} vs ${b.logp[i]![j]}`));
      lr.forEach((x, j) => t.true(Math.abs(x - b.logpRef[i]![j]!) < 2e-4, `logpRef ${i},${j}`));
      // the reward source saw the decoded response without EOS
      const text = tok.decode(y.filter((x) => x !== tok.eosId), { skipSpecial: true });
      t.is(b.texts[i], text);
      const q = stubQuantiles(text);
      const U = q.reduce((s, x) => s - Math.exp(-2 * Math.fround(x)), 0) / q.length;
      t.true(close(b.utilities[i]!, U, 1e-6));
      const eos = y[y.length - 1] === tok.eosId;
      t.is(b.eos[i], eos);
      R.push(U - 0.4 * lp.reduce((s, x, j) => s + refKlToken(x, lr[j]!, est), 0) - (eos ? 0 : 0.25));
    }
    R.forEach((r, i) => t.true(Math.abs(r - b.rewards[i]!) < 1e-3, `R_${i} ${r} vs ${b.rewards[i]}`));
    const A = R.map((r, i) => {
      const g = Math.floor(i / k) * k;
      return r - (R.slice(g, g + k).reduce((a, c) => a + c, 0) - r) / (k - 1);
    });
    A.forEach((a, i) => t.true(Math.abs(a - b.advantages[i]!) < 2e-3, `A_${i}`));
    b.logp.forEach((lp, i) => (lossRef -= (b.advantages[i]! * lp.reduce((s, x) => s + x, 0)) / b.responses.length));
    const { grads, loss, ppo } = await learner.gradients(b, { training: false });
    t.true(close(loss, lossRef, 1e-4), `loss ${loss} vs ${lossRef}`);
    t.deepEqual(Object.keys(grads).sort(), Object.keys(adapter.variables).sort());
    t.is(ppo, undefined);
    tf.dispose(Object.values(grads));
    // PPO diagnostics through the learner's micro-batches: "old" log-probs shifted per token so that
    // some ratios leave [1 - eps, 1 + eps] by a wide margin, against float64 from the same model
    const shifts = [0.5, -0.05, 0.3, -0.4, 0.02];
    const lpNew64: number[][] = [];
    const old = b.logp.map((lp, i) => {
      const p = prompts[Math.floor(i / k)]!.ids;
      const seq = [...p, ...b.responses[i]!];
      const pol = logSoftmax64(model, seq, temperature);
      lpNew64.push(b.responses[i]!.map((tokId, j) => pol[p.length - 1 + j]![tokId]!));
      return Float32Array.from(lp, (x, j) => x + shifts[(i + j) % shifts.length]!);
    });
    const oldRows = old.map((o) => Array.from(o));
    const refStats = refPpoStats(lpNew64, oldRows, oldRows.map((o) => o.map(() => 1)), learner.settings.clipRange);
    const pg = await learner.gradients({ ...b, logp: old }, { ppo: true, training: false });
    tf.dispose(Object.values(pg.grads));
    t.is(pg.ppo!.tokens, refStats.tokens);
    t.true(refStats.clipfrac > 0 && refStats.clipfrac < 1, `clipfrac ${refStats.clipfrac}`);
    t.true(close(pg.ppo!.clipped / pg.ppo!.tokens, refStats.clipfrac, 1e-12), `clipfrac ${pg.ppo!.clipped / pg.ppo!.tokens} vs ${refStats.clipfrac}`);
    t.true(close(pg.ppo!.approxKlSum / pg.ppo!.tokens, refStats.approxKl, 1e-3), `approx_kl ${pg.ppo!.approxKlSum / pg.ppo!.tokens} vs ${refStats.approxKl}`);
    const { batchMetrics } = await import('../src/learner.js');
    const m = batchMetrics(b, learner.reward.taus);
    t.true(close(m['policy/entropy'] as number, entTotal / tokTotal, 1e-4));
    t.true(close(m['reward/q0.10'] as number, b.texts.reduce((s, x) => s + stubQuantiles(x)[0]!, 0) / b.texts.length, 1e-5));
    t.deepEqual(Object.keys(m).filter((x) => x.startsWith('reward/q')), TAUS.map((x) => `reward/q${x.toFixed(2)}`));
    t.true(close(m['objective/kl'] as number, Array.from(b.kl).reduce((a, x) => a + x, 0) / b.kl.length, 1e-12));
    opt.dispose();
    model.dispose();
  });
}

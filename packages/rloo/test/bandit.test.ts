/**
 * A bandit: the prompt is fixed, the response one token from a 6-token vocabulary, and each token
 * (arm) has a known reward distribution given as 19 quantiles. The RLOO estimator's gradient,
 * averaged over many batches, must agree with the exact gradient of
 *   J(theta) = sum_a pi(a) U(a) - beta KL(pi || pi_ref)
 * (computed from the full next-token distribution, no sampling) within Monte-Carlo error; and
 * training must end on the arm the utility prefers.
 */
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { AdamW, Rng, initBackend, withLoraDisabled, type LlamaModel } from '@qrlhf/core';
import { makeUtility, taus as makeTaus, type Utility } from '@qrlhf/qrm';
import { rlooDefaults, RlooLearner, functionRewardSource, type RlPrompt } from '../src/index.js';
import { scaledRandomModel, tinyConfig, tokenizerFor } from './fixture.js';

const CHARS = ['a', 'b', 'c'];
const TAUS = makeTaus(19);
/** 'a': higher mean, heavy left tail (the two lowest quantiles at -4); 'b': safe; anything else: poor. */
const RISKY = Array.from(TAUS, (_, j) => (j < 2 ? -4 : 1));
const SAFE = Array.from(TAUS, () => 0.3);
const POOR = Array.from(TAUS, () => -0.5);
const armQuantiles = (response: string): number[] => (response === 'a' ? RISKY : response === 'b' ? SAFE : POOR);
const reward = functionRewardSource(TAUS, ({ response }) => armQuantiles(response));

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

const tok = tokenizerFor(CHARS);
const V = 3 + CHARS.length;
const PROMPT: RlPrompt = { text: 'ab', ids: [tok.bosId, ...tok.encode('ab')] };

/** Token id -> the text the reward source sees (EOS and other special tokens decode to ''). */
const armText = (id: number): string => tok.decode([id], { skipSpecial: true });

function policy(seed: number, targets: string[] | 'all-linear'): { model: LlamaModel; opt: AdamW } {
  const model = scaledRandomModel(tinyConfig(V), seed, 1);
  const adapter = model.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: targets }, new Rng(seed));
  return { model, opt: new AdamW(adapter.variables, { lr: 0, weightDecay: 0 }) };
}

/** pi(.|prompt) over the vocabulary (float64 from float32 logits). */
function nextTokenProbs(model: LlamaModel): number[] {
  const row = tf.tidy(() => {
    const logits = model.forward(tf.tensor2d([PROMPT.ids], [1, PROMPT.ids.length], 'int32'));
    return logits.slice([0, PROMPT.ids.length - 1, 0], [1, 1, V]).reshape([V]).arraySync() as number[];
  });
  const m = Math.max(...row);
  const e = row.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** The exact gradient of J = sum_a pi(a) U(a) - beta sum_a pi(a) (log pi(a) - log pi_ref(a)) w.r.t. the adapter. */
function exactGradient(model: LlamaModel, U: number[], beta: number): Record<string, Float64Array> {
  const adapter = model.lora!;
  const ids = tf.tensor2d([PROMPT.ids], [1, PROMPT.ids.length], 'int32');
  const last = (m: LlamaModel) => tf.logSoftmax(m.forward(ids).slice([0, PROMPT.ids.length - 1, 0], [1, 1, V]).reshape([V]));
  const lpRef = withLoraDisabled(model, () => tf.tidy(() => last(model)));
  const u = tf.tensor1d(U);
  const { value, grads } = tf.variableGrads(() => {
    const lp = last(model);
    const p = tf.exp(lp);
    return tf.sub(tf.sum(tf.mul(p, u)), tf.mul(beta, tf.sum(tf.mul(p, tf.sub(lp, lpRef))))) as tf.Scalar;
  }, Object.values(adapter.variables));
  const byName = new Map(Object.entries(adapter.variables).map(([k, v]) => [v.name, k]));
  const out: Record<string, Float64Array> = {};
  for (const [name, g] of Object.entries(grads)) out[byName.get(name)!] = Float64Array.from(g.dataSync());
  tf.dispose([value, ...Object.values(grads), ids, lpRef, u]);
  return out;
}

function flatten(g: Record<string, Float64Array | Float32Array>, keys: string[]): Float64Array {
  const n = keys.reduce((s, k) => s + g[k]!.length, 0);
  const out = new Float64Array(n);
  let o = 0;
  for (const k of keys) {
    out.set(g[k]!, o);
    o += g[k]!.length;
  }
  return out;
}

const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * b[i]!, 0);

for (const k of [2, 4]) {
  test(`the mean RLOO gradient equals the exact policy gradient within Monte-Carlo error (k = ${k}, beta = 0.5, exponential utility)`, async (t) => {
    const { model, opt } = policy(11, ['v_proj', 'o_proj', 'up_proj']);
    const adapter = model.lora!;
    // move away from B = 0 so that pi differs from pi_ref and the KL term matters
    const prng = new Rng(4);
    for (const v of Object.values(adapter.variables)) v.assign(tf.tidy(() => tf.add(v, tf.mul(tf.randomNormal(v.shape, 0, 1, 'float32', prng.seed32()), 0.4))));
    const utility: Utility = await makeUtility({ name: 'exponential', lambda: 0.5 });
    const beta = 0.5;
    const U = Array.from({ length: V }, (_, a) => utility(Float32Array.from(armQuantiles(armText(a))), TAUS));
    const learner = new RlooLearner({
      model, tokenizer: tok, reward, utility, rng: new Rng(`bandit-grad-${k}`), optimizer: opt,
      settings: { ...rlooDefaults(), k, betaKl: beta, maxNewTokens: 1, microBatchSize: 256, generationBatchSize: 256 },
    });
    const keys = Object.keys(adapter.variables).sort();
    const exact = flatten(exactGradient(model, U, beta), keys);
    // beta matters: the KL part of the exact gradient is a sizeable share of it
    const noKl = flatten(exactGradient(model, U, 0), keys);
    const klShare = Math.sqrt(dot(exact.map((x, i) => x - noKl[i]!), exact.map((x, i) => x - noKl[i]!)) / dot(exact, exact));
    t.log(`|grad J(beta) - grad J(0)| / |grad J(beta)| = ${klShare.toFixed(3)}`);
    t.true(klShare > 0.1);
    const nBatches = 24;
    const perBatch = 256 / k;
    const est: Float64Array[] = [];
    for (let b = 0; b < nBatches; b++) {
      const batch = await learner.collect(Array.from({ length: perBatch }, () => PROMPT));
      const { grads } = await learner.gradients(batch, { training: false });
      const g: Record<string, Float32Array> = {};
      for (const key of keys) g[key] = grads[key]!.dataSync() as Float32Array;
      tf.dispose(Object.values(grads));
      est.push(flatten(g, keys).map((x) => -x)); // ascent direction = -grad(loss)
    }
    const dim = exact.length;
    const mean = new Float64Array(dim);
    for (const e of est) e.forEach((x, i) => (mean[i]! += x / nBatches));
    // projections on the exact direction and on random directions: mean within 4 standard errors
    const dirs: Float64Array[] = [exact.map((x) => x / Math.sqrt(dot(exact, exact)))];
    const drng = new Rng(77);
    for (let d = 0; d < 4; d++) {
      const v = Float64Array.from({ length: dim }, () => drng.normal());
      dirs.push(v.map((x) => x / Math.sqrt(dot(v, v))));
    }
    for (const [i, v] of dirs.entries()) {
      const proj = est.map((e) => dot(e, v));
      const m = proj.reduce((a, b) => a + b, 0) / nBatches;
      const sd = Math.sqrt(proj.reduce((a, b) => a + (b - m) ** 2, 0) / (nBatches - 1));
      const se = sd / Math.sqrt(nBatches);
      const want = dot(exact, v);
      t.log(`direction ${i === 0 ? 'exact' : `random ${i}`}: RLOO mean ${m.toFixed(5)} ± ${se.toFixed(5)} (se), exact ${want.toFixed(5)}, z = ${((m - want) / se).toFixed(2)}`);
      t.true(Math.abs(m - want) < 4 * se, `direction ${i}: ${m} vs ${want} (se ${se})`);
    }
    const diff = mean.map((x, i) => x - exact[i]!);
    const rel = Math.sqrt(dot(diff, diff) / dot(exact, exact));
    const cos = dot(mean, exact) / Math.sqrt(dot(mean, mean) * dot(exact, exact));
    t.log(`|mean - exact| / |exact| = ${rel.toFixed(3)}, cosine ${cos.toFixed(4)}, ${nBatches} batches of ${perBatch} prompts x ${k}, ${dim} parameters`);
    t.true(cos > 0.97, `cosine ${cos}`);
    opt.dispose();
    model.dispose();
  });
}

for (const [name, lambda, want] of [['expectation', 1, 'a'], ['exponential', 1, 'b']] as const) {
  test(`training converges to the arm ${name} prefers ('${want}': ${want === 'a' ? 'higher mean, heavy left tail' : 'safe'})`, async (t) => {
    const { model, opt } = policy(5, 'all-linear');
    const utility = await makeUtility({ name, lambda });
    const learner = new RlooLearner({
      model, tokenizer: tok, reward, utility, rng: new Rng(`bandit-train-${name}`), optimizer: opt,
      settings: { ...rlooDefaults(), k: 2, betaKl: 0, maxNewTokens: 1, microBatchSize: 64, generationBatchSize: 64 },
    });
    const before = nextTokenProbs(model);
    const idA = tok.encode('a')[0]!;
    const idB = tok.encode('b')[0]!;
    let steps = 0;
    let p = before;
    while (steps < 300) {
      await learner.step(Array.from({ length: 16 }, () => PROMPT), 0.01);
      steps++;
      p = nextTokenProbs(model);
      if (p[want === 'a' ? idA : idB]! > 0.95) break;
    }
    t.log(`${name}: pi(a) ${before[idA]!.toFixed(3)} -> ${p[idA]!.toFixed(3)}, pi(b) ${before[idB]!.toFixed(3)} -> ${p[idB]!.toFixed(3)} after ${steps} steps`);
    t.true(p[want === 'a' ? idA : idB]! > 0.95);
    opt.dispose();
    model.dispose();
  });
}

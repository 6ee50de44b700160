import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '@qrlhf/core';
import {
  QuantileRewardModel, debiasPenalties, expectedRewards, guessVerbosity, predictAttributeQuantiles, trainQrm,
  type PairFeatures, type QuantileHeads,
} from '@qrlhf/qrm';

/**
 * A world where the response feature's coordinate m is attribute m's level, the heads read it
 * (q_{m,k} = x_m + spread_k), the chosen response wins on attribute 0, attribute 1 is verbosity
 * and attribute 0 is partly verbosity.
 */
function world(n: number, seed: number): { heads: QuantileHeads; pairs: PairFeatures } {
  const M = 3, K = 4, d = 5;
  const taus = Float32Array.from([0.2, 0.4, 0.6, 0.8]);
  const weight = new Float32Array(M * K * d);
  const bias = new Float32Array(M * K);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) {
    weight[(m * K + k) * d + m] = 1;
    bias[m * K + k] = 0.1 * (k - 1.5);
  }
  const heads: QuantileHeads = { weight, bias, taus, attributes: ['helpfulness', 'verbosity', 'harmlessness'], d };
  const rng = new Rng(seed);
  const emb = new Float32Array(n * 2 * d);
  const prompt = new Float32Array(n * 2 * d);
  for (let i = 0; i < n; i++) {
    const p = Array.from({ length: d }, () => rng.normal());
    for (let side = 0; side < 2; side++) {
      const verb = rng.normal();
      const x = [0.5 * verb + rng.normal(), verb, 3 * rng.normal(), rng.normal(), rng.normal()];
      emb.set(x, (2 * i + side) * d);
      prompt.set(p, (2 * i + side) * d);
    }
    // the side with the larger debiased helpfulness is the chosen one
    const h = (side: number) => emb[(2 * i + side) * d]! - 0.3 * emb[(2 * i + side) * d + 1]!;
    if (h(0) < h(1)) {
      const a = emb.slice(2 * i * d, (2 * i + 1) * d);
      emb.copyWithin(2 * i * d, (2 * i + 1) * d, (2 * i + 2) * d);
      emb.set(a, (2 * i + 1) * d);
    }
  }
  return { heads, pairs: { n, d, embeddings: emb, prompt_embeddings: prompt } };
}

test.serial('trainQrm: penalties from the reference responses, held-out split, a gate that learns the deciding attribute', async (t) => {
  const { heads, pairs } = world(600, 1);
  t.is(guessVerbosity(heads.attributes), 'verbosity');
  t.is(guessVerbosity(['a', 'helpsteer-verbosity']), 'helpsteer-verbosity');
  t.is(guessVerbosity(['a', 'b']), null);
  const r = await trainQrm({ heads, pairs, hiddenSize: 16, epochs: 15, batchSize: 64, lr: 0.01, valFraction: 0.2, seed: 3 });
  // penalties: ArmoRM's rule on the 2n responses' expected attribute rewards
  const q = await predictAttributeQuantiles(heads, pairs.embeddings, 2 * pairs.n);
  const ref = debiasPenalties(expectedRewards(q, 2 * pairs.n, 3, 4), 2 * pairs.n, 3, 1);
  t.deepEqual(r.debias.penalties, ref.penalties);
  t.is(r.debias.penalties[1], 1);
  t.true(r.debias.penalties[0]! > 0, 'helpfulness carries verbosity and is penalised');
  t.is(r.nVal, 120);
  t.is(r.nTrain, 480);
  t.true(r.training.valAccuracy! > 0.85, `held-out accuracy ${r.training.valAccuracy}`);
  const s = (await r.model.scoreFeatures(pairs.prompt_embeddings.subarray(0, 5), pairs.embeddings.subarray(0, 5), 1))[0]!;
  t.true(s.gate[0]! > s.gate[2]!, `gate ${Array.from(s.gate)}`);
  // the model saves and loads with its penalties and verbosity
  const dir = join(mkdtempSync(join(tmpdir(), 'qrlhf-s2-')), 'qrm');
  await r.model.save(dir);
  return QuantileRewardModel.load(dir).then((m) => {
    t.deepEqual(m.debiasPenalties, r.debias.penalties);
    t.is(m.verbosity, 'verbosity');
    m.dispose();
    r.model.dispose();
  });
});

test.serial('trainQrm: no debiasing when asked, and mismatched features are clear errors', async (t) => {
  const { heads, pairs } = world(40, 2);
  const r = await trainQrm({ heads, pairs, verbosity: null, hiddenSize: 4, epochs: 1, batchSize: 16, valFraction: 0 });
  t.deepEqual(r.debias.penalties, [0, 0, 0]);
  t.is(r.nVal, 0);
  t.is(r.training.valAccuracy, undefined);
  r.model.dispose();
  await t.throwsAsync(() => trainQrm({ heads, pairs: { ...pairs, d: 4 } }), { message: /pair features have d = 4, the heads expect 5/ });
  await t.throwsAsync(() => trainQrm({ heads, pairs, verbosity: 'length' }), { message: /verbosity attribute "length" is not one of/ });
});

import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, Rng, characterTokenizer, loadModel, saveHfFolder, type LlamaConfig } from '@qrlhf/core';
import { parseConfig } from '@qrlhf/core';
import { REWARD_BACKBONE_SCHEMA, trainRewardBackbone } from '../experiments/figure3/reward-backbone.js';

/**
 * The Figure 3 reward backbone: fine-tuned on ratings whose helpfulness is set by one word of the
 * response, its read-out must beat the constant predictor by far (a sign or masking error would
 * not), missing labels are left out, and the saved folder is a model the QRM stages can load.
 */
const tiny: LlamaConfig = {
  vocabSize: 40, hiddenSize: 32, intermediateSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 128, bosTokenId: 1, eosTokenId: 2,
};

for (const pooling of ['mean', 'max'] as const) test(`reward backbone (${pooling} pooling): learns a rating the base does not predict, masks missing labels, saves a loadable model`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-rbb-'));
  try {
    const model = LlamaModel.random(tiny, 5);
    await saveHfFolder(join(dir, 'base'), model, characterTokenizer());
    model.dispose();
    const rng = new Rng(2);
    const rows = Array.from({ length: 200 }, (_, i) => {
      const good = rng.next() < 0.5;
      return {
        prompt: `\n\nHuman: how ${'abc'[i % 3]}?\n\nAssistant:`,
        response: ` ${good ? 'good' : 'bad'} ${'xyz'[rng.int(3)]}`,
        helpfulness: (good ? 0.8 : 0.2) + 0.02 * rng.normal(),
        // a label that is missing on half the rows: they must not pull the prediction to 0
        verbosity: i % 2 ? null : 0.5,
      };
    });
    writeFileSync(join(dir, 'ratings.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const cfg = parseConfig(REWARD_BACKBONE_SCHEMA, { steps: 30, batchSize: 16, lr: 5e-3, warmupSteps: 3 }, 'test');
    const r = await trainRewardBackbone(cfg, { base: join(dir, 'base'), ratings: join(dir, 'ratings.jsonl'), attributes: ['helpfulness', 'verbosity'], pooling, out: join(dir, 'rb') });
    t.is(r.rows, 200);
    // the constant predictor's loss: helpfulness variance 0.09 over the labels seen (200 + 100 of them)
    t.true(Math.abs(r.baselineLoss - (0.09 * 200) / 300) < 0.01, `baseline ${r.baselineLoss}`);
    t.true(r.loss < 0.3 * r.baselineLoss, `loss ${r.loss} vs constant ${r.baselineLoss}`);
    t.true(existsSync(join(dir, 'rb', 'config.json')));
    const loaded = await loadModel(join(dir, 'rb'));
    const base = await loadModel(join(dir, 'base'));
    const a = await loaded.model.weights['model.norm.weight']!.data();
    const b = await base.model.weights['model.norm.weight']!.data();
    t.true(a.some((x, i) => x !== b[i]), 'the backbone was trained');
    loaded.model.dispose();
    base.model.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

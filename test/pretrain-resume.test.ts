// figure3's pretraining on core's training scaffold: a run stopped after a checkpoint and continued
// ends with the same base weights, losses and metrics as an uninterrupted one (the data order that
// spans an epoch boundary is in the checkpoint), and a continuation with another setting is refused.
import test from 'ava';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError, initBackend, parseConfig } from '@qrlhf/core';
import { createWorld, writeWorldData } from '@qrlhf/world';
import { PRETRAIN_SCHEMA, pretrainBase } from '../experiments/figure3/pretrain.js';

const cfg = parseConfig(PRETRAIN_SCHEMA, {
  hiddenSize: 16, intermediateSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, maxPositionEmbeddings: 256,
  // 20 dialogues, 8 a step: the checkpoint at step 2 holds the 4 left of the first order, the
  // order is reshuffled at steps 3 and 5
  steps: 5, batchSize: 8, warmupSteps: 1, checkpointEvery: 2, seed: 3,
}, 'test pretrain config');

const rows = (run: string) => readFileSync(join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

test('pretraining stopped after step 3 and continued from its step-2 checkpoint ends bit-identical; another lr is refused', async (t) => {
  await initBackend('auto', { quiet: true });
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-pretrain-'));
  const files = await writeWorldData(createWorld(1), join(dir, 'data'), { pretrain: 20, sft: 0, ratings: 0, pairs: 0, prompts: 0, evalPrompts: 0 });
  const io = (name: string) => ({ corpus: files.pretrain, tokenizer: files.tokenizer, out: join(dir, name, 'base'), run: join(dir, name, 'run') });

  const whole = await pretrainBase(cfg, io('whole'), { quiet: true });

  const cut = io('cut');
  await t.throwsAsync(
    () => pretrainBase(cfg, cut, { quiet: true, onStep: (s) => { if (s === 3) throw new Error('stopped at step 3'); } }),
    { message: 'stopped at step 3' },
  );
  t.deepEqual(rows(cut.run).map((r) => r['step']), [1, 2, 3]);
  await t.throwsAsync(() => pretrainBase({ ...cfg, lr: cfg.lr / 2 }, cut, { quiet: true }), {
    instanceOf: QrlhfError,
    message: /cannot resume: the checkpoint was made with different "lr"/,
  });
  const resumed = await pretrainBase(cfg, cut, { quiet: true });

  t.deepEqual(resumed, whole);
  t.deepEqual(rows(cut.run), rows(io('whole').run), 'metrics.jsonl: step 3 logged again from the checkpoint, same numbers');
  t.true(readFileSync(join(cut.out, 'model.safetensors')).equals(readFileSync(join(io('whole').out, 'model.safetensors'))), 'base weights bit-identical');
});

import test from 'ava';
import { join } from 'node:path';
import { runSft, readMetrics } from '../src/index.js';
import { hhRows, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

test('the response loss falls on a tiny set it can memorise (all-linear LoRA)', async (t) => {
  const d = tmp('overfit');
  const model = await writeTinyModel(join(d, 'model'), 3);
  const data = writeJsonl(join(d, 'data.jsonl'), hhRows(4));
  const cfg = tinyConfig({
    model, data, out: join(d, 'run'), heldOutFraction: 0, loraTargets: ['all-linear'], loraR: 8, loraAlpha: 16,
    lr: 3e-2, warmupSteps: 0, schedule: 'constant', microBatchSize: 2, gradAccumSteps: 2, maxSteps: 40,
    evalEvery: 0, checkpointEvery: 0, samples: 0,
  });
  const r = await runSft(cfg, { quiet: true });
  t.is(r.evalLossBefore, null);
  const losses = readMetrics(cfg.out).filter((m) => 'train/loss' in m).map((m) => m['train/loss'] as number);
  t.is(losses.length, 40);
  t.log(`loss ${losses[0]!.toFixed(3)} → ${losses.at(-1)!.toFixed(3)}`);
  // a uniform guess over 99 tokens costs ln 99 = 4.6 nats; memorised responses cost far less
  t.true(losses[0]! > 4, `first loss ${losses[0]}`);
  t.true(losses.at(-1)! < 0.5 * losses[0]!, `last loss ${losses.at(-1)} vs first ${losses[0]}`);
  const tail = losses.slice(-5).reduce((a, b) => a + b) / 5;
  const head = losses.slice(0, 5).reduce((a, b) => a + b) / 5;
  t.true(tail < head);
});

import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsoleSink, JsonlSink, Progress, Tracker, formatDuration, type MetricSink, type Metrics, type ProgressStream } from '@qrlhf/core';

const tmp = () => mkdtempSync(join(tmpdir(), 'qrlhf-track-'));
const lines = (p: string) => readFileSync(p, 'utf8').split('\n').filter((l) => l.length > 0);

/** A stream that records what is written, terminal or not. */
function fakeStream(isTTY: boolean): ProgressStream & { out: string } {
  const s = { out: '', isTTY, columns: 200, write(c: string | Uint8Array) { s.out += c.toString(); return true; } };
  return s as unknown as ProgressStream & { out: string };
}

test('JsonlSink writes one object per line, readable before close; non-finite numbers become null', async (t) => {
  const p = join(tmp(), 'sub', 'metrics.jsonl');
  const s = new JsonlSink(p);
  s.log({ step: 0, loss: 2.5, tag: 'a', ok: true, none: null });
  t.deepEqual(lines(p).map((l) => JSON.parse(l) as unknown), [{ step: 0, loss: 2.5, tag: 'a', ok: true, none: null }]);
  s.log({ step: 1, loss: Number.NaN, inf: Infinity });
  t.deepEqual(JSON.parse(lines(p)[1]!), { step: 1, loss: null, inf: null });
  await s.close();
  t.throws(() => s.log({ step: 2 }));
  // not append: a new sink starts the file afresh
  const s2 = new JsonlSink(p);
  await s2.close();
  t.is(readFileSync(p, 'utf8'), '');
});

test('JsonlSink append mode continues the file, ends a torn line, and can keep only some rows', async (t) => {
  const p = join(tmp(), 'metrics.jsonl');
  writeFileSync(p, '{"step":0}\n{"step":1}\n{"ste');
  const a = new JsonlSink(p, { append: true });
  a.log({ step: 2 });
  await a.close();
  t.deepEqual(lines(p), ['{"step":0}', '{"step":1}', '{"ste', '{"step":2}']);
  const b = new JsonlSink(p, { append: true, keep: (r) => typeof r['step'] === 'number' && r['step'] < 2 });
  b.log({ step: 2, again: true });
  await b.close();
  t.deepEqual(lines(p), ['{"step":0}', '{"step":1}', '{"step":2,"again":true}']);
});

test('Progress on a non-terminal prints plain throttled lines with rate and ETA', (t) => {
  let now = 0;
  const stream = fakeStream(false);
  const p = new Progress(100, 'sft', { stream, now: () => now, plainIntervalMs: 10_000 });
  now = 1000;
  p.tick(1, 'loss 3');
  now = 5000;
  p.tick(9, 'loss 2'); // throttled: within 10 s of the last line
  now = 20_000;
  p.update(40, 'loss 1.5');
  now = 21_000;
  p.done();
  const out = stream.out.split('\n').filter((l) => l);
  // rate = units done / seconds since start: 1/1, 40/20, 40/21; ETA = remaining / rate
  t.deepEqual(out, [
    'sft 1/100 1% 1 it/s ETA 1:39 | loss 3',
    'sft 40/100 40% 2 it/s ETA 0:30 | loss 1.5',
    `sft 40/100 40% ${Number((40 / 21).toFixed(2))} it/s ETA ${formatDuration(60 / (40 / 21))} | loss 1.5`,
  ]);
  t.false(stream.out.includes('\r'));
  p.tick();
  t.is(stream.out.split('\n').filter((l) => l).length, 3, 'nothing after done');
});

test('Progress on a terminal redraws one line in place, throttled, and ends it on done', (t) => {
  let now = 0;
  const stream = fakeStream(true);
  const p = new Progress(10, 'rl', { stream, now: () => now, intervalMs: 100, start: 2 });
  for (let i = 0; i < 8; i++) {
    now += 30;
    p.tick();
  }
  const draws = stream.out.split('\r').filter((s) => s.length > 0);
  // ticks at t = 30, 60, ..., 240: drawn at the first (t=30), then at the first t >= 130 (t=150)
  t.is(draws.length, 2, JSON.stringify(stream.out));
  t.regex(draws[0]!, /^rl \[#{7}\.{17}\] 3\/10 30% /);
  t.regex(draws[1]!, /^rl \[#{17}\.{7}\] 7\/10 70% /);
  t.true(draws.every((d) => d.endsWith('\x1b[K')));
  p.println('eval loss 1.0');
  t.true(stream.out.endsWith('\x1b[K') && stream.out.includes('\r\x1b[Keval loss 1.0\n'));
  now = 1000;
  p.done();
  t.true(stream.out.endsWith('\x1b[K\n'));
  t.regex(stream.out, /rl \[#{24}\] 10\/10 100% 8 it\/s elapsed 0:01\x1b\[K\n$/);
});

test('ConsoleSink shows the chosen keys with their latest values and positions the bar by step', async (t) => {
  let now = 0;
  const stream = fakeStream(false);
  const c = new ConsoleSink({ keys: ['train/loss', 'eval/loss'], total: 4, label: 'sft', stream, now: () => now, plainIntervalMs: 0 });
  now = 1000;
  c.log({ step: 1, 'train/loss': 2.34567, 'train/lr': 1e-4 });
  now = 2000;
  c.log({ step: 1, split: 'eval', 'eval/loss': 2.5 });
  now = 3000;
  c.log({ step: 2, 'train/loss': 0.000123 });
  await c.close();
  const out = stream.out.split('\n').filter((l) => l);
  t.true(out[0]!.startsWith('sft 1/4 25% 1 it/s') && out[0]!.endsWith('| train/loss 2.346'), out[0]);
  t.true(out[1]!.endsWith('| train/loss 2.346 eval/loss 2.5'), out[1]);
  t.true(out[2]!.startsWith('sft 2/4 50%') && out[2]!.endsWith('| train/loss 1.23e-4 eval/loss 2.5'), out[2]);
});

test('Tracker fans out to metrics.jsonl and extra sinks, drops a failing extra sink with a warning, resumes by appending', async (t) => {
  const dir = tmp();
  const got: Metrics[] = [];
  let closed = 0;
  const extra: MetricSink = { log: (m) => void got.push(m), close: async () => void closed++ };
  const bad: MetricSink = { log: () => { throw new Error('boom'); }, close: async () => undefined };
  const stderrWrite = process.stderr.write.bind(process.stderr);
  let err = '';
  process.stderr.write = ((c: string) => ((err += c), true)) as typeof process.stderr.write;
  let tr: Tracker;
  try {
    tr = await Tracker.create({ dir, sinks: [bad, extra], wandb: false });
    for (let step = 0; step < 3; step++) tr.log({ step, loss: step });
  } finally {
    process.stderr.write = stderrWrite;
  }
  await tr.close();
  t.is(err.match(/warning: a metrics sink failed and was dropped: boom/g)?.length, 1, err);
  t.deepEqual(got, [0, 1, 2].map((s) => ({ step: s, loss: s })));
  t.is(closed, 1);
  t.deepEqual(lines(join(dir, 'metrics.jsonl')).map((l) => JSON.parse(l) as unknown), got);
  const again = await Tracker.create({ dir, resume: true, keep: (r) => (r['step'] as number) < 2 });
  again.log({ step: 2, loss: 20 });
  await again.close();
  t.deepEqual(lines(join(dir, 'metrics.jsonl')), ['{"step":0,"loss":0}', '{"step":1,"loss":1}', '{"step":2,"loss":20}']);
});

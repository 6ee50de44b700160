import test from 'ava';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qrlhf, messageLines } from './cli-helpers.js';

function fakeRun(dir: string, shift: number): string {
  mkdirSync(dir, { recursive: true });
  const lines = Array.from({ length: 12 }, (_, step) =>
    JSON.stringify({ step, 'q0.05': shift + step / 10, 'q0.10': 1, 'q0.15': 1, 'q0.20': 1, 'q0.25': 1, expectation: 2 }),
  );
  writeFileSync(join(dir, 'metrics.jsonl'), lines.join('\n') + '\n');
  return dir;
}

test('plot figure3 writes an SVG with one curve per run per panel and a PNG', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-plot-'));
  const a = [fakeRun(join(tmp, 'a1'), 0), fakeRun(join(tmp, 'a2'), 0.1)];
  const b = [fakeRun(join(tmp, 'b1'), 1)];
  const out = join(tmp, 'fig');
  const r = await qrlhf(['plot', 'figure3', '--runs', `neutral=${a.join(',')}`, '--runs', `aware=${b.join(',')}`, '--out', out]);
  t.is(r.code, 0, r.stderr);
  const svg = readFileSync(`${out}.svg`, 'utf8');
  t.is((svg.match(/<polyline /g) ?? []).length, 12);
  t.true(svg.includes('neutral (mean of 2 seeds'));
  t.true(existsSync(`${out}.png`));
});

test('plot figure3 with a missing folder or no runs prints one line and exits 1', async (t) => {
  const r = await qrlhf(['plot', 'figure3', '--runs', 'x=/nonexistent/run']);
  t.is(r.code, 1);
  t.deepEqual(messageLines(r.stderr).length, 1);
  t.regex(r.stderr, /nonexistent\/run not found/);
  const r2 = await qrlhf(['plot', 'figure3']);
  t.is(r2.code, 1);
  t.regex(r2.stderr, /--runs is required/);
});

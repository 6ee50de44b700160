/**
 * Bad inputs: each gives one QrlhfError naming the file (and the line for a data row).
 */
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError } from '@qrlhf/core';
import { runSft } from '../src/index.js';
import { hhRows, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

let model: string;
test.before(async () => {
  model = await writeTinyModel(join(tmp('errmodel'), 'model'));
});

async function failure(data: string, over: Parameters<typeof tinyConfig>[0] extends infer T ? Partial<T> : never = {}) {
  const out = join(tmp('err'), 'run');
  return runSft(tinyConfig({ model, data, out, maxSteps: 1, ...over }), { quiet: true });
}

test('a malformed JSON line names the file and the line', async (t) => {
  const p = join(tmp('bad'), 'data.jsonl');
  const rows = hhRows(4).map((r) => JSON.stringify(r));
  rows.splice(2, 0, '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"'); // line 3: unterminated
  writeFileSync(p, rows.join('\n') + '\n');
  const e = await t.throwsAsync(failure(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}:3:`), e!.message);
});

test('a row without "chosen" names the file, the line and the field', async (t) => {
  const p = writeJsonl(join(tmp('bad'), 'data.jsonl'), [...hhRows(1), { rejected: '\n\nHuman: a\n\nAssistant: b' }, ...hhRows(2)]);
  const e = await t.throwsAsync(failure(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}:2:`), e!.message);
  t.regex(e!.message, /"chosen"/);
});

test('a dataset that is empty after the length filter names the file and the limit', async (t) => {
  const p = writeJsonl(join(tmp('bad'), 'data.jsonl'), hhRows(5));
  const e = await t.throwsAsync(failure(p, { maxLength: 10 }), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}: no example left after filtering`), e!.message);
  t.regex(e!.message, /all 5 are longer than maxLength = 10/);
});

test('a {prompt, response} file trains like HH rows; a chosen dialogue without an Assistant turn is refused', async (t) => {
  const p = writeJsonl(join(tmp('pr'), 'data.jsonl'), hhRows(4).map((r) => {
    const i = r.chosen.lastIndexOf('Assistant:') + 'Assistant:'.length;
    return { prompt: r.chosen.slice(0, i), response: r.chosen.slice(i) };
  }));
  const r = await failure(p);
  t.is(r.steps, 1);
  const q = writeJsonl(join(tmp('bad'), 'data.jsonl'), [...hhRows(2), { chosen: '\n\nHuman: no reply here' }]);
  const e = await t.throwsAsync(failure(q), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${q}:3:`), e!.message);
});

test('a run folder with a checkpoint is not overwritten without resume', async (t) => {
  const data = writeJsonl(join(tmp('ok'), 'data.jsonl'), hhRows(6));
  const out = join(tmp('err'), 'run');
  await runSft(tinyConfig({ model, data, out, maxSteps: 1 }), { quiet: true });
  const e = await t.throwsAsync(runSft(tinyConfig({ model, data, out, maxSteps: 1 }), { quiet: true }), { instanceOf: QrlhfError });
  t.regex(e!.message, /already has a checkpoint; pass --resume/);
  const e2 = await t.throwsAsync(runSft(tinyConfig({ model, data, out, maxSteps: 2, resume: true, seed: 9 }), { quiet: true }), { instanceOf: QrlhfError });
  t.regex(e2!.message, /cannot resume: .*"seed" \(0, now 9\)/);
});

import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { QrlhfError, readJsonl, readSftExamples, sharedDataFile } from '@qrlhf/core';

const hh = sharedDataFile('hh-rlhf/harmless-base-test.jsonl.gz');
const maybe = hh ? test : test.skip;
if (!hh) console.log('hh-rlhf/harmless-base-test.jsonl.gz not found under the shared data folder: real-data tests skipped');

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-data-'));
function file(name: string, content: string | Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  return p;
}

/** Independent reading of the real file: whole-buffer gunzip, split, JSON.parse, indexOf by hand. */
function referenceSplit(path: string) {
  const lines = gunzipSync(readFileSync(path)).toString('utf8').split('\n').filter((l) => l.length > 0);
  return lines.map((l) => {
    const chosen = (JSON.parse(l) as { chosen: string }).chosen;
    let cut = -1;
    for (let i = chosen.length - 12; i >= 0; i--) {
      if (chosen.substring(i, i + 12) === '\n\nAssistant:') {
        cut = i + 12;
        break;
      }
    }
    return { prompt: chosen.substring(0, cut), response: chosen.substring(cut) };
  });
}

maybe('the real HH-RLHF file streams 2312 rows that match an independent whole-file read', async (t) => {
  const ref = referenceSplit(hh!);
  t.is(ref.length, 2312);
  let n = 0;
  for await (const { row, line } of readJsonl(hh!)) {
    n++;
    t.is(line, n);
    if (typeof row !== 'object' || row === null || !('chosen' in row) || !('rejected' in row)) t.fail(`row ${line}`);
  }
  t.is(n, 2312);
  const skipped: string[] = [];
  const ex = await readSftExamples(hh!, { onSkip: (where) => skipped.push(where) });
  const kept = ref.filter((r) => r.response.trim() !== '');
  t.is(ex.length + skipped.length, 2312);
  t.is(ex.length, kept.length);
  t.deepEqual(ex.map(({ prompt, response }) => ({ prompt, response })), kept);
  for (const e of ex) {
    // the turns: one per marker, alternating from the user, the last one the response
    const markers = (e.prompt + e.response).match(/\n\n(Human|Assistant):/g)!;
    t.deepEqual(e.messages.map((m) => m.role), markers.map((m) => (m.includes('Human') ? 'user' : 'assistant')));
    t.is(e.messages[e.messages.length - 1]!.content, e.response.trim());
    t.true(e.prompt.startsWith('\n\nHuman:'));
    t.true(e.prompt.endsWith('\n\nAssistant:'));
    t.false(e.response.includes('\n\nAssistant:'));
  }
  for (const w of skipped) t.regex(w, /harmless-base-test\.jsonl\.gz:\d+$/);
});

test('{prompt, response} rows and HH rows (gz or not) are both read', async (t) => {
  const rows = [
    { prompt: 'Q: 1+1?', response: ' 2' },
    { chosen: '\n\nHuman: hi\n\nAssistant: hey', rejected: '\n\nHuman: hi\n\nAssistant: go away' },
    { chosen: '\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d' },
  ];
  const text = rows.map((r) => JSON.stringify(r)).join('\n');
  const u = (content: string) => ({ role: 'user', content });
  const a = (content: string) => ({ role: 'assistant', content });
  const expected = [
    { prompt: 'Q: 1+1?', response: ' 2', messages: [u('Q: 1+1?'), a('2')] },
    { prompt: '\n\nHuman: hi\n\nAssistant:', response: ' hey', messages: [u('hi'), a('hey')] },
    { prompt: '\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:', response: ' d', messages: [u('a'), a('b'), u('c'), a('d')] },
  ];
  t.deepEqual(await readSftExamples(file('mix.jsonl', text)), expected);
  t.deepEqual(await readSftExamples(file('mix.jsonl.gz', gzipSync(text))), expected);
});

async function errorOf(t: import('ava').ExecutionContext, content: string): Promise<{ p: string; msg: string }> {
  const p = file(`e${Math.random().toString(36).slice(2)}.jsonl`, content);
  const e = await t.throwsAsync(readSftExamples(p), { instanceOf: QrlhfError });
  return { p, msg: e!.message };
}

test('a row without chosen names the file and the line', async (t) => {
  const { p, msg } = await errorOf(t, '{"chosen":"\\n\\nHuman: x\\n\\nAssistant: y"}\n{"rejected":"\\n\\nHuman: x\\n\\nAssistant: z"}\n');
  t.true(msg.startsWith(`${p}:2: row has no "chosen" field`), msg);
  t.regex(msg, /"rejected"/);
});

test('wrong types name the file, line and field', async (t) => {
  let r = await errorOf(t, '{"chosen": 42, "rejected": "x"}\n');
  t.is(r.msg, `${r.p}:1: field "chosen": expected a string, got number`);
  r = await errorOf(t, '{"prompt": "a", "response": ["b"]}\n');
  t.is(r.msg, `${r.p}:1: field "response": expected a string, got an array`);
  r = await errorOf(t, '{"prompt": "a"}\n');
  t.is(r.msg, `${r.p}:1: field "response": expected a string, got undefined`);
  r = await errorOf(t, '\n[1, 2]\n');
  t.true(r.msg.startsWith(`${r.p}:2: expected a JSON object`), r.msg);
  r = await errorOf(t, 'null\n');
  t.regex(r.msg, /:1: expected a JSON object .* got null$/);
});

test('a chosen dialogue without an Assistant turn names the line and field', async (t) => {
  const { p, msg } = await errorOf(t, '{"chosen":"\\n\\nHuman: only"}\n');
  t.true(msg.startsWith(`${p}:1: field "chosen": the dialogue has no`), msg);
});

test('an empty file, a blank file and a file of empty responses are errors', async (t) => {
  let r = await errorOf(t, '');
  t.is(r.msg, `${r.p}: the file has no rows (expected JSON lines with "chosen" or "prompt"/"response")`);
  r = await errorOf(t, '\n\n   \n');
  t.regex(r.msg, /the file has no rows/);
  r = await errorOf(t, '{"prompt":"a","response":"  "}\n{"chosen":"\\n\\nHuman: q\\n\\nAssistant:"}\n');
  t.is(r.msg, `${r.p}: none of its 2 rows has a non-empty response`);
});

test('malformed JSON surfaces through readSftExamples with FILE:LINE', async (t) => {
  const { p, msg } = await errorOf(t, '{"prompt":"a","response":"b"}\n{"prompt":\n');
  t.true(msg.startsWith(`${p}:2: invalid JSON`), msg);
});

import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { QrlhfError, readJsonl, readJsonlAll } from '@qrlhf/core';

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-jsonl-'));
function file(name: string, content: string | Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  return p;
}
async function collect(path: string) {
  const out = [];
  for await (const r of readJsonl(path)) out.push(r);
  return out;
}

test('plain and gzip files give the same rows with 1-based line numbers, blank lines skipped', async (t) => {
  const text = '{"a":1}\r\n\n  \n{"b":"é ü 😀"}\n[1,2]\n"x"';
  const expected = [
    { row: { a: 1 }, line: 1 },
    { row: { b: 'é ü 😀' }, line: 4 },
    { row: [1, 2], line: 5 },
    { row: 'x', line: 6 },
  ];
  t.deepEqual(await collect(file('a.jsonl', text)), expected);
  t.deepEqual(await collect(file('a.jsonl.gz', gzipSync(text))), expected);
  // gzip detected by its magic bytes even without the suffix; a leading BOM is dropped
  t.deepEqual(await collect(file('b.jsonl', gzipSync('\ufeff' + text))), expected);
});

test('multi-byte characters split across stream chunks are decoded intact', async (t) => {
  // 64 KiB chunks: put many 4-byte characters so some straddle a chunk border
  const rows = Array.from({ length: 3000 }, (_, i) => ({ i, s: '😀'.repeat(20) + 'é'.repeat(i % 7) }));
  const p = file('big.jsonl.gz', gzipSync(rows.map((r) => JSON.stringify(r)).join('\n') + '\n'));
  const got = await readJsonlAll(p, (r) => r);
  t.deepEqual(got, rows);
});

test('bad JSON names the file and the line', async (t) => {
  const p = file('bad.jsonl', '{"a":1}\n{"a":2}\n{"a":\n');
  const e = await t.throwsAsync(collect(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}:3: invalid JSON`), e!.message);
  const pg = file('bad.jsonl.gz', gzipSync('{"a":1}\n\nnot json\n'));
  const eg = await t.throwsAsync(collect(pg), { instanceOf: QrlhfError });
  t.true(eg!.message.startsWith(`${pg}:3: invalid JSON`), eg!.message);
});

test('missing file, directory, corrupt gzip and truncated gzip are QrlhfErrors naming the file', async (t) => {
  const missing = join(dir, 'nope.jsonl');
  t.regex((await t.throwsAsync(collect(missing), { instanceOf: QrlhfError }))!.message, /nope\.jsonl: no such file/);
  t.regex((await t.throwsAsync(collect(dir), { instanceOf: QrlhfError }))!.message, /is a directory/);
  const corrupt = file('c.jsonl.gz', Buffer.from('this is not gzip at all'));
  t.regex((await t.throwsAsync(collect(corrupt), { instanceOf: QrlhfError }))!.message, /c\.jsonl\.gz: cannot decompress/);
  const gz = gzipSync('{"a":1}\n'.repeat(1000));
  const trunc = file('t.jsonl.gz', gz.subarray(0, gz.length - 10));
  t.regex((await t.throwsAsync(collect(trunc), { instanceOf: QrlhfError }))!.message, /t\.jsonl\.gz: cannot decompress/);
});

test('readJsonlAll passes FILE:LINE to the validator and returns its values', async (t) => {
  const p = file('v.jsonl', '1\n\n2\n3\n');
  const wheres: string[] = [];
  const got = await readJsonlAll(p, (r, where) => {
    wheres.push(where);
    return (r as number) * 10;
  });
  t.deepEqual(got, [10, 20, 30]);
  t.deepEqual(wheres, [`${p}:1`, `${p}:3`, `${p}:4`]);
  const e = await t.throwsAsync(
    readJsonlAll(p, (r, where) => {
      if (r === 2) throw new QrlhfError(`${where}: two is not allowed`);
      return r;
    }),
  );
  t.is(e!.message, `${p}:3: two is not allowed`);
});

test('breaking out of the iteration early is clean', async (t) => {
  const p = file('early.jsonl.gz', gzipSync('{"a":1}\n'.repeat(100000)));
  let n = 0;
  for await (const _ of readJsonl(p)) if (++n === 3) break;
  t.is(n, 3);
});

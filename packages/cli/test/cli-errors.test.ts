import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError, sharedDataFile } from '@qrlhf/core';
import { backendFlag, existingPath, intFlag, numFlag, requiredString } from '../src/commands/generate.js';
import { messageLines, qrlhf } from './cli-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-cli-err-'));
const stories = sharedDataFile('models/stories260K/stories260K.bin');

/** One "qrlhf: ..." line naming the fault, exit code 1, nothing on stdout, no stack trace. */
async function oneLine(t: import('ava').ExecutionContext, args: string[], fault: RegExp, opts: { allowBackendLine?: boolean } = {}) {
  const r = await qrlhf(args);
  t.is(r.code, 1, `exit code for ${args.join(' ')}: ${r.stderr}`);
  t.is(r.stdout, '');
  const lines = opts.allowBackendLine ? messageLines(r.stderr) : r.stderr.split('\n').filter((l) => l.trim() !== '');
  t.is(lines.length, 1, `one line for ${args.join(' ')}: ${JSON.stringify(r.stderr)}`);
  t.regex(lines[0] ?? '', /^qrlhf: /);
  t.regex(lines[0] ?? '', fault);
  t.notRegex(r.stderr, /\n\s+at .*:\d+/, 'no stack trace');
}

test('each command: a missing flag, a missing file, a bad value give one line and exit 1', async (t) => {
  const model = stories ?? join(dir, 'absent.bin');
  await Promise.all([
    oneLine(t, ['generate'], /--model is required/),
    oneLine(t, ['generate', '--model', join(dir, 'nope.bin')], /--model: .*nope\.bin does not exist/),
    oneLine(t, ['generate', '--model', model, '--top-p', '1.5'], /--top-p: expected a number in \(0, 1\], got "1\.5"/),
    oneLine(t, ['convert', '--model', join(dir, 'x.bin'), '--out', join(dir, 'o'), '--dtype', 'F64'], /--dtype: expected one of F32, F16, BF16/),
    oneLine(t, ['tokenize', '--tokenizer', join(dir, 'none.json'), '--text', 'hi'], /none\.json: tokenizer file not found/),
  ]);
});

// The flag checks themselves, in process (no spawn per case).
test('flag parsing: ranges, integers, repeats, backends', (t) => {
  const bad = (f: () => unknown, re: RegExp) => {
    const e = t.throws(f, { instanceOf: QrlhfError });
    t.regex(e!.message, re);
  };
  t.is(intFlag('max-new-tokens', '12', { min: 0 }), 12);
  t.is(intFlag('max-new-tokens', undefined, { min: 0, dflt: 256 }), 256);
  bad(() => intFlag('max-new-tokens', 'ten', { min: 0 }), /^--max-new-tokens: expected an integer >= 0, got "ten"$/);
  bad(() => intFlag('max-new-tokens', '-1', { min: 0 }), /got "-1"/);
  bad(() => intFlag('top-k', '2.5', { min: 1 }), /^--top-k: expected an integer >= 1, got "2\.5"$/);
  bad(() => intFlag('top-k', '', { min: 1 }), /got ""/);
  bad(() => intFlag('seed', '4294967296', { min: 0, max: 2 ** 32 - 1 }), /^--seed: expected an integer in 0\.\.4294967295/);
  bad(() => intFlag('top-k', ['3', '4'], { min: 1 }), /^--top-k: given 2 times, expected once$/);
  t.is(numFlag('temperature', '0', { min: 0, max: Infinity }), 0);
  t.is(numFlag('temperature', '0.7', { min: 0, max: Infinity }), 0.7);
  bad(() => numFlag('temperature', '-0.5', { min: 0, max: Infinity }), /^--temperature: expected a number in \[0, inf\), got "-0\.5"$/);
  bad(() => numFlag('temperature', 'hot', { min: 0, max: Infinity }), /got "hot"/);
  bad(() => numFlag('temperature', 'Infinity', { min: 0, max: Infinity }), /got "Infinity"/);
  t.is(numFlag('top-p', '1', { min: 0, max: 1, minOpen: true }), 1);
  bad(() => numFlag('top-p', '0', { min: 0, max: 1, minOpen: true }), /^--top-p: expected a number in \(0, 1\], got "0"$/);
  t.is(backendFlag(undefined), 'auto');
  t.is(backendFlag('wasm'), 'wasm');
  bad(() => backendFlag('tpu'), /^--backend: expected one of auto, tensorflow-gpu, tensorflow, wasm, cpu, got "tpu"$/);
  bad(() => requiredString('model', undefined, 'a model'), /^--model is required \(a model\)$/);
  bad(() => existingPath('model', join(dir, 'nope.bin')), /^--model: .*nope\.bin does not exist$/);
  t.notThrows(() => existingPath('model', dir));
});

test('a corrupt model file and a bad tokenizer.json are one clear line too', async (t) => {
  const bad = join(dir, 'short.bin');
  writeFileSync(bad, Buffer.alloc(100));
  const badJson = join(dir, 'tokenizer.json');
  writeFileSync(badJson, '{"model": [');
  await Promise.all([
    oneLine(t, ['generate', '--model', bad, '--backend', 'cpu'], /short\.bin: not a llama2\.c checkpoint/, { allowBackendLine: true }),
    oneLine(t, ['tokenize', '--tokenizer', badJson, '--text', 'a'], /tokenizer\.json: not valid JSON/),
  ]);
});

const maybe = stories ? test : test.skip;
maybe('convert refuses to replace a folder that is not a model folder', async (t) => {
  const precious = mkdtempSync(join(tmpdir(), 'qrlhf-precious-'));
  writeFileSync(join(precious, 'notes.txt'), 'keep');
  await oneLine(t, ['convert', '--model', stories!, '--out', precious], /not a model folder .* refusing to replace it/);
  t.is(readFileSync(join(precious, 'notes.txt'), 'utf8'), 'keep');
});

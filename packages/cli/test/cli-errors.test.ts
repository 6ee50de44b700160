import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yargs from 'yargs';
import { QrlhfError, defineConfig, loadConfig, sharedDataFile, type ConfigSchema } from '@qrlhf/core';
import { flagsOf, schemaOptions } from '../src/options.js';
import { GENERATE_SCHEMA, mustExist } from '../src/stages/generate.js';
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
    oneLine(t, ['generate'], /^qrlhf: generate: setting "model" \(--model\) must be set/),
    oneLine(t, ['generate', '--model', join(dir, 'nope.bin')], /--model: .*nope\.bin does not exist/),
    oneLine(t, ['generate', '--model', model, '--top-p', '1.5'], /--top-p: expected a number in \(0, 1\] or null, got "1\.5"/),
    oneLine(t, ['convert', '--model', join(dir, 'x.bin'), '--out', join(dir, 'o'), '--dtype', 'F64'], /--dtype: expected one of "F32", "F16", "BF16"/),
    oneLine(t, ['qrm', 'fit', '--features', 'f', '--out', 'o', '--alpah', '1'], /Unknown argument: alpah/),
    oneLine(t, ['tokenize', '--tokenizer', join(dir, 'none.json'), '--text', 'hi'], /none\.json: tokenizer file not found/),
  ]);
});

/** What a command's run function would get for these arguments: yargs with the schema's options, then the config layer. */
function configOf<S extends ConfigSchema>(schema: S, args: string[]) {
  const argv = schemaOptions(yargs(), schema).strict().exitProcess(false).fail((msg) => {
    throw new QrlhfError(msg);
  }).parseSync(args) as Record<string, unknown>;
  return loadConfig(schema, null, flagsOf(argv, schema));
}

// The generated flags, in process (no spawn per case): values reach the run function parsed and checked.
test('generated flags: ranges, integers, repeats, lists, blocks', (t) => {
  const bad = (f: () => unknown, re: RegExp) => {
    const e = t.throws(f, { instanceOf: QrlhfError });
    t.regex(e!.message, re);
  };
  const g = (...args: string[]) => configOf(GENERATE_SCHEMA, args);
  t.like(g('--model', 'm', '--max-new-tokens', '12', '--temperature', '0.7', '--top-p', '1', '--seed', '7'), { maxNewTokens: 12, temperature: 0.7, topP: 1, seed: 7, topK: null });
  t.is(g().maxNewTokens, 256);
  t.is(g('--model', 'm').model, join(process.cwd(), 'm'), 'a relative path resolved against the working directory, once');
  bad(() => g('--max-new-tokens', 'ten'), /^command line: --max-new-tokens: expected an integer >= 0, got "ten"/);
  bad(() => g('--max-new-tokens', '-1'), /got "-1"/);
  bad(() => g('--top-k', '2.5'), /^command line: --top-k: expected an integer >= 1 or null, got "2\.5"/);
  bad(() => g('--seed', '4294967296'), /^command line: --seed: expected an integer in \[0, 4294967295\]/);
  bad(() => g('--top-k', '3', '--top-k', '4'), /--top-k: expected an integer >= 1 or null, got \["3","4"\]/);
  bad(() => g('--temperature', '-0.5'), /^command line: --temperature: expected a number >= 0, got "-0\.5" \(a string\)$/);
  bad(() => g('--temperature', 'Infinity'), /got "Infinity"/);
  bad(() => g('--top-p', '0'), /^command line: --top-p: expected a number in \(0, 1\] or null, got "0"/);
  bad(() => g('--backend', 'tpu'), /^command line: --backend: expected one of "auto", "tensorflow-gpu", "webgpu", "tensorflow", "wasm", "cpu", got "tpu"/);
  bad(() => g('--max-new-tokens'), /Not enough arguments following: max-new-tokens/);
  t.deepEqual(g('--stop', 'a,b', '--stop', '\\n\\nHuman:').stop, ['a,b', '\\n\\nHuman:'], 'a repeatable flag: one text per occurrence, commas kept');
  bad(() => mustExist({ model: join(dir, 'nope.bin') }, ['model']), /^--model: .*nope\.bin does not exist$/);
  t.notThrows(() => mustExist({ model: dir }, ['model']));
  // a block: dotted flags, kebab-case inside
  const engine = defineConfig({ kind: { type: 'string', default: 'local', choices: ['local', 'openai'], doc: 'engine' }, baseUrl: { type: 'string', default: null, nullable: true, doc: 'URL' } });
  const schema = defineConfig({ lr: { type: 'number', default: 1, doc: 'lr' }, engine: { type: 'group', schema: engine, doc: 'the engine' }, list: { type: 'number[]', default: [1], doc: 'l' } });
  t.deepEqual(configOf(schema, ['--engine.kind', 'openai', '--engine.base-url', 'http://h:8000/v1', '--list', '1,2.5']), { lr: 1, engine: { kind: 'openai', baseUrl: 'http://h:8000/v1' }, list: [1, 2.5] });
  bad(() => configOf(schema, ['--engine.kind', 'vllm']), /--engine\.kind: expected one of "local", "openai"/);
  bad(() => configOf(schema, ['--engine.knd', 'x']), /Unknown argument: engine\.knd/);
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

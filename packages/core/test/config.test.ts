import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  QrlhfError,
  applyOverrides,
  defaultConfig,
  defineConfig,
  describeConfig,
  checkField,
  didYouMean,
  jsonErrorOffset,
  loadConfig,
  loadConfigFile,
  omitFields,
  parseConfig,
  requireKeys,
  type ConfigOf,
} from '@qrlhf/core';

const schema = defineConfig({
  lr: { type: 'number', default: 3e-4, min: 0, doc: 'peak learning rate' },
  maxSteps: { type: 'int', default: 100, min: 1, doc: 'number of updates' },
  warmupRatio: { type: 'number', default: 0.03, min: 0, max: 1, doc: 'share of steps spent warming up' },
  targets: { type: 'string[]', default: ['q_proj', 'v_proj'], choices: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], doc: 'LoRA target modules' },
  taus: { type: 'number[]', default: [0.05, 0.1], min: 0, max: 1, doc: 'quantile levels to log' },
  utility: { type: 'string', default: 'expectation', choices: ['expectation', 'exponential'], doc: 'reward utility' },
  resume: { type: 'boolean', default: false, doc: 'continue from the last checkpoint' },
  model: { type: 'string', default: null, nullable: true, doc: 'base model folder' },
  seed: { type: 'int', default: null, nullable: true, doc: 'random seed' },
});
type Cfg = ConfigOf<typeof schema>;

// Compile-time checks of the inferred type (tsc rejects this file if the inference is loose).
type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const typeIsPrecise: Equals<
  Cfg,
  {
    lr: number;
    maxSteps: number;
    warmupRatio: number;
    targets: ('q_proj' | 'k_proj' | 'v_proj' | 'o_proj')[];
    taus: number[];
    utility: 'expectation' | 'exponential';
    resume: boolean;
    model: string | null;
    seed: number | null;
  }
> = true;

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-config-'));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}
function err(t: import('ava').ExecutionContext, fn: () => unknown): string {
  return t.throws(fn, { instanceOf: QrlhfError })!.message;
}

test('defaults are filled, given keys taken, comments ignored, the inferred type is exact', (t) => {
  t.true(typeIsPrecise);
  const cfg = parseConfig(schema, { lr: 1e-4, targets: ['k_proj'], model: 'models/x', '// note': 'a comment', $schema: 'x' }, 'a.json');
  t.deepEqual(cfg, {
    lr: 1e-4,
    maxSteps: 100,
    warmupRatio: 0.03,
    targets: ['k_proj'],
    taus: [0.05, 0.1],
    utility: 'expectation',
    resume: false,
    model: 'models/x',
    seed: null,
  });
  // defaults are copies: mutating a parsed list does not touch the schema
  const d = defaultConfig(schema);
  d.targets.push('o_proj');
  t.deepEqual(schema.targets.default, ['q_proj', 'v_proj']);
  t.deepEqual(parseConfig(schema, {}).targets, ['q_proj', 'v_proj']);
});

test('an unknown key names the file and the key, with a did-you-mean', (t) => {
  t.is(err(t, () => parseConfig(schema, { lrr: 1 }, 'configs/sft.json')).split(';')[0], 'configs/sft.json: unknown key "lrr" (did you mean "lr"?)');
  t.regex(err(t, () => parseConfig(schema, { max_steps: 3 }, 'c.json')), /unknown key "max_steps" \(did you mean "maxSteps"\?\)/);
  t.regex(err(t, () => parseConfig(schema, { warmup_ratio: 0.1 }, 'c.json')), /did you mean "warmupRatio"/);
  const far = err(t, () => parseConfig(schema, { batchSize: 3 }, 'c.json'));
  t.false(far.includes('did you mean'), far);
  t.regex(far, /known: lr, maxSteps, warmupRatio/);
  t.is(didYouMean('utlity', Object.keys(schema)), 'utility');
});

test('wrong types and out-of-range values name file, key, expected and got', (t) => {
  const cases: [Record<string, unknown>, string][] = [
    [{ lr: '3e-4' }, 'c.json: key "lr": expected a number >= 0, got "3e-4" (a string)'],
    [{ lr: -1 }, 'c.json: key "lr": expected a number >= 0, got -1 (a number)'],
    [{ maxSteps: 2.5 }, 'c.json: key "maxSteps": expected an integer >= 1, got 2.5 (a number)'],
    [{ maxSteps: 0 }, 'c.json: key "maxSteps": expected an integer >= 1, got 0 (a number)'],
    [{ warmupRatio: 1.5 }, 'c.json: key "warmupRatio": expected a number in [0, 1], got 1.5 (a number)'],
    [{ utility: 'cvar' }, 'c.json: key "utility": expected one of "expectation", "exponential", got "cvar" (a string)'],
    [{ targets: 'q_proj' }, 'c.json: key "targets": expected a list of "q_proj", "k_proj", "v_proj", "o_proj", got "q_proj" (a string)'],
    [{ targets: ['q_proj', 'mlp'] }, 'c.json: key "targets": expected a list of "q_proj", "k_proj", "v_proj", "o_proj", got ["q_proj","mlp"] (an array)'],
    [{ taus: [0.5, 2] }, 'c.json: key "taus": expected a list of numbers in [0, 1], got [0.5,2] (an array)'],
    [{ resume: 'yes' }, 'c.json: key "resume": expected true or false, got "yes" (a string)'],
    [{ lr: null }, 'c.json: key "lr": expected a number >= 0, got null (null)'],
    [{ model: 3 }, 'c.json: key "model": expected a string or null, got 3 (a number)'],
    [{ seed: { a: 1 } }, 'c.json: key "seed": expected an integer or null, got {"a":1} (an object)'],
  ];
  for (const [json, msg] of cases) t.is(err(t, () => parseConfig(schema, json, 'c.json')), msg);
  t.is(err(t, () => parseConfig(schema, [1], 'c.json')), 'c.json: expected a JSON object of settings, got [1] (an array)');
  t.is(err(t, () => parseConfig(schema, null, 'c.json')), 'c.json: expected a JSON object of settings, got null (null)');
});

test('loadConfigFile: a good file, a missing file, a JSON syntax error with its line', (t) => {
  const good = file('good.json', JSON.stringify({ lr: 0.01, utility: 'exponential' }, null, 2));
  const cfg = loadConfigFile(schema, good);
  t.is(cfg.lr, 0.01);
  t.is(cfg.utility, 'exponential');
  t.is(err(t, () => loadConfigFile(schema, join(dir, 'none.json'))), `${join(dir, 'none.json')}: no such config file`);
  const bad = file('bad.json', '{\n  "lr": 0.01,\n  "maxSteps": ,\n}\n');
  t.true(err(t, () => loadConfigFile(schema, bad)).startsWith(`${bad}:3:15: invalid JSON: `));
  const bom = file('bom.json', '\ufeff{"lr": 0.5}');
  t.is(loadConfigFile(schema, bom).lr, 0.5);
  const typo = file('typo.json', '{"utilty": "exponential"}');
  t.regex(err(t, () => loadConfigFile(schema, typo)), new RegExp(`typo\\.json: unknown key "utilty" \\(did you mean "utility"\\?\\)`));
});

test('applyOverrides: string flags are converted, kebab-case accepted, the input left untouched', (t) => {
  const base = parseConfig(schema, { lr: 0.01 });
  const cfg = applyOverrides(schema, base, {
    _: ['sft'],
    $0: 'qrlhf',
    lr: '3e-5',
    'max-steps': '7',
    targets: 'q_proj, o_proj',
    taus: '0.05,0.25',
    resume: 'true',
    model: 'm/x',
    seed: 12, // already parsed by the flag parser
    utility: undefined, // not given
    config: 'configs/x.json', // not a setting: passes through when not strict
  });
  t.deepEqual(cfg, { ...base, lr: 3e-5, maxSteps: 7, targets: ['q_proj', 'o_proj'], taus: [0.05, 0.25], resume: true, model: 'm/x', seed: 12 });
  t.is(base.lr, 0.01);
  t.deepEqual(base.targets, ['q_proj', 'v_proj']);
  t.is(applyOverrides(schema, cfg, { model: 'null' }).model, null);
  t.deepEqual(applyOverrides(schema, cfg, { targets: ['k_proj', 'v_proj'] }).targets, ['k_proj', 'v_proj']);
  t.is(applyOverrides(schema, cfg, { maxSteps: 9 }).maxSteps, 9);
});

test('applyOverrides errors name the flag, expected and got; strict mode rejects unknown flags with a suggestion', (t) => {
  const base = defaultConfig(schema);
  t.is(err(t, () => applyOverrides(schema, base, { lr: 'fast' })), 'command line: --lr: expected a number >= 0, got "fast" (a string)');
  t.is(err(t, () => applyOverrides(schema, base, { 'max-steps': '1.5' })), 'command line: --max-steps: expected an integer >= 1, got "1.5" (a string)');
  t.is(err(t, () => applyOverrides(schema, base, { resume: 'maybe' })), 'command line: --resume: expected true or false, got "maybe" (a string)');
  t.is(err(t, () => applyOverrides(schema, base, { lr: '' })), 'command line: --lr: expected a number >= 0, got "" (a string)');
  t.is(err(t, () => applyOverrides(schema, base, { lr: 'null' })), 'command line: --lr: expected a number >= 0, got "null" (a string)');
  t.is(err(t, () => applyOverrides(schema, base, { utility: 'cvar' }, { source: 'flags' })), 'flags: --utility: expected one of "expectation", "exponential", got "cvar" (a string)');
  t.regex(err(t, () => applyOverrides(schema, base, { 'max-step': '3' }, { strict: true })), /^command line: unknown flag --max-step \(did you mean --max-steps\?\)/);
  t.notThrows(() => applyOverrides(schema, base, { config: 'x', backend: 'wasm' }, { strict: true, ignore: ['config', 'backend'] }));
});

test('requireKeys narrows nullable settings and names the missing ones', (t) => {
  const cfg = defaultConfig(schema);
  t.is(err(t, () => requireKeys(cfg, ['model', 'seed'], 'configs/sft.json')), 'configs/sft.json: settings "model" (--model), "seed" (--seed) must be set, in the config file or as a flag');
  const ok = requireKeys({ ...cfg, model: 'x' }, ['model']);
  const m: string = ok.model; // compiles only because the type was narrowed
  t.is(m, 'x');
});

test('describeConfig lists every setting with flag, doc, default and constraints', (t) => {
  const text = describeConfig(schema);
  const lines = text.split('\n');
  t.is(lines.length, Object.keys(schema).length);
  t.regex(lines[0]!, /^ {2}--lr <number> +peak learning rate \(default: 0\.0003; >= 0\)$/);
  t.regex(text, /--max-steps <int> +number of updates \(default: 100; >= 1\)/);
  t.regex(text, /--targets <a,b,\.\.\.> +LoRA target modules \(default: q_proj,v_proj; choices: q_proj, k_proj, v_proj, o_proj\)/);
  t.regex(text, /--utility <string> +reward utility \(default: expectation; choices: expectation, exponential\)/);
  t.regex(text, /--model <string> +base model folder \(default: none\)/);
  t.regex(text, /--warmup-ratio <number> +share of steps spent warming up \(default: 0\.03; in \[0, 1\]\)/);
  // the docs line up in one column
  const col = lines.map((l) => l.search(/  [a-zA-Z]/g));
  t.true(col.every((c) => c === col[0]), JSON.stringify(col));
});

test('a schema whose default breaks its own field is refused at declaration', (t) => {
  t.throws(() => defineConfig({ k: { type: 'int', default: 0.5, doc: 'x' } }), { message: /default of "k" \(0\.5 \(a number\)\) is not an integer/ });
  t.throws(() => defineConfig({ k: { type: 'string', default: 'c', choices: ['a', 'b'], doc: 'x' } }), { message: /is not one of "a", "b"/ });
  t.throws(() => defineConfig({ k: { type: 'string', default: null, doc: 'x' } }), { message: /default of "k"/ });
});

test('jsonErrorOffset finds the first syntax error, and agrees with JSON.parse', (t) => {
  t.is(jsonErrorOffset('{"a": 1,}'), 8);
  t.is(jsonErrorOffset('{"a" 1}'), 5);
  t.is(jsonErrorOffset('[1, 2 3]'), 6);
  t.is(jsonErrorOffset('{"a": tru}'), 6);
  t.is(jsonErrorOffset('{"a": 01}'), 7);
  t.is(jsonErrorOffset('{"a": "x\\q"}'), 9);
  t.is(jsonErrorOffset('{"a": 1} x'), 9);
  t.is(jsonErrorOffset('{"a": [1, {"b": null}], "c": -1.5e3, "d": "\\u00e9"}'), 51);
  // random single-character corruptions of a valid document: an offset before the end means JSON.parse fails too
  const doc = JSON.stringify({ lr: 3e-4, list: [1, 2, { x: 'y\n' }], ok: true, none: null, s: 'é"' }, null, 2);
  t.is(jsonErrorOffset(doc), doc.length);
  const chars = ' {}[],:"0-1e.tfnx\\';
  let seed = 1;
  let invalid = 0;
  for (let k = 0; k < 400; k++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    const pos = seed % doc.length;
    const c = chars[seed % chars.length]!;
    const bad = doc.slice(0, pos) + c + doc.slice(pos + 1);
    let parses = true;
    try {
      JSON.parse(bad);
    } catch {
      parses = false;
    }
    const off = jsonErrorOffset(bad);
    if (parses) t.is(off, bad.length, JSON.stringify(bad));
    if (off < bad.length) t.false(parses, JSON.stringify(bad));
    if (!parses) invalid++;
  }
  t.true(invalid > 100);
});

// ---- blocks (group fields), dotted flags, paths, exclusive bounds ---------------------------

const engine = defineConfig({
  kind: { type: 'string', default: 'local', choices: ['local', 'openai'], doc: 'where rollouts come from' },
  baseUrl: { type: 'string', default: null, nullable: true, doc: 'server URL' },
});
const stage = defineConfig({
  lr: { type: 'number', default: 1e-4, min: 0, minExclusive: true, doc: 'learning rate' },
  data: { type: 'string', default: null, nullable: true, path: true, doc: 'data file' },
  engine: { type: 'group', schema: engine, doc: 'the rollout engine' },
});
const experiment = defineConfig({
  seeds: { type: 'number[]', default: [1], doc: 'seeds' },
  rloo: { type: 'group', schema: omitFields(stage, ['data']), doc: 'the RL stage' },
  sft: { type: 'group', schema: stage, doc: 'the SFT stage' },
});

test('blocks: a nested object is a partial of its schema, typed, checked with the dotted key named', (t) => {
  const cfg = parseConfig(experiment, { rloo: { lr: 0.5, engine: { kind: 'openai' } } }, 'e.json');
  const typed: { seeds: number[]; rloo: { lr: number; engine: { kind: 'local' | 'openai'; baseUrl: string | null } }; sft: { data: string | null } } = cfg;
  t.truthy(typed);
  t.deepEqual(cfg, {
    seeds: [1],
    rloo: { lr: 0.5, engine: { kind: 'openai', baseUrl: null } },
    sft: { lr: 1e-4, data: null, engine: { kind: 'local', baseUrl: null } },
  });
  t.is(err(t, () => parseConfig(experiment, { rloo: { engine: { kind: 'vllm' } } }, 'e.json')), 'e.json: key "rloo.engine.kind": expected one of "local", "openai", got "vllm" (a string)');
  t.regex(err(t, () => parseConfig(experiment, { rloo: { data: 'x' } }, 'e.json')), /^e\.json: unknown key "rloo\.data"; known: lr, engine$/);
  t.regex(err(t, () => parseConfig(experiment, { sft: { lrr: 1 } }, 'e.json')), /unknown key "sft\.lrr" \(did you mean "sft\.lr"\?\)/);
  t.regex(err(t, () => parseConfig(experiment, { sft: 3 }, 'e.json')), /^e\.json: key "sft": expected an object of settings \(keys: lr, data, engine\), got 3/);
  t.is(err(t, () => parseConfig(stage, { lr: 0 }, 'c.json')), 'c.json: key "lr": expected a number > 0, got 0 (a number)');
});

test('blocks: dotted flags (as written or as a parser nests them) override one key, the rest kept', (t) => {
  const base = parseConfig(experiment, { rloo: { lr: 0.5 } });
  const a = applyOverrides(experiment, base, { 'rloo.engine.base-url': 'http://x', 'sft.lr': '2e-3', seeds: '1,2' });
  t.deepEqual(a.rloo, { lr: 0.5, engine: { kind: 'local', baseUrl: 'http://x' } });
  t.is(a.sft.lr, 2e-3);
  t.deepEqual(a.seeds, [1, 2]);
  t.is(base.rloo.engine.baseUrl, null, 'the input is left untouched');
  const b = applyOverrides(experiment, base, { rloo: { engine: { kind: 'openai' } } });
  t.is(b.rloo.engine.kind, 'openai');
  t.is(b.rloo.lr, 0.5);
  t.is(err(t, () => applyOverrides(experiment, base, { 'rloo.lr': '0' })), 'command line: --rloo.lr: expected a number > 0, got "0" (a string)');
  t.regex(err(t, () => applyOverrides(experiment, base, { 'rloo.engine.kindd': 'x' })), /^command line: unknown flag --rloo\.engine\.kindd \(did you mean --rloo\.engine\.kind\?\)/);
  t.regex(err(t, () => applyOverrides(experiment, base, { rloo: '3' })), /--rloo: a block of settings; set its keys as --rloo\.KEY VALUE/);
  t.regex(describeConfig(experiment), /--rloo\.engine\.base-url <string> +server URL \(default: none\)/);
  t.regex(describeConfig(experiment), /--sft\.lr <number> +learning rate \(default: 0\.0001; > 0\)/);
});

test('paths: relative ones resolved once, a file\'s against its folder, a flag\'s against the working directory', (t) => {
  const sub = join(dir, 'sub');
  const f = file('paths.json', JSON.stringify({ sft: { data: 'd.jsonl' }, seeds: [3] }));
  t.is(loadConfigFile(experiment, f).sft.data, join(dir, 'd.jsonl'));
  t.is(loadConfig(experiment, f, { 'sft.data': 'e.jsonl' }).sft.data, resolve('e.jsonl'));
  t.is(loadConfig(experiment, f, { 'sft.data': '/abs/e.jsonl' }).sft.data, '/abs/e.jsonl');
  t.is(applyOverrides(stage, defaultConfig(stage), { data: 'x' }, { base: sub }).data, join(sub, 'x'));
  t.is(parseConfig(stage, { data: 'rel' }).data, 'rel', 'no base: left as given');
  // a predicate says which values are paths
  const u = defineConfig({ utility: { type: 'string', default: 'expectation', path: (v: string) => v.endsWith('.mjs'), doc: 'u' } });
  t.is(applyOverrides(u, defaultConfig(u), { utility: 'cvar' }).utility, 'cvar');
  t.is(applyOverrides(u, defaultConfig(u), { utility: 'my.mjs' }).utility, resolve('my.mjs'));
  t.regex(err(t, () => loadConfig(stage, null, { nope: 1 })), /unknown flag --nope/);
});

test('checkField: a library function checks a value with the bound its schema declares', (t) => {
  t.is(checkField(stage.lr, 0.1, 'lr'), 0.1);
  t.is(err(t, () => checkField(stage.lr, 0, 'utility exponential: lambda')), 'utility exponential: lambda: expected a number > 0, got 0 (a number)');
  t.throws(() => defineConfig({ 'a.b': { type: 'int', default: 1, doc: 'x' } }), { message: /has a dot/ });
});

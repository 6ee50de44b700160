import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { QrlhfError, repoRoot } from '@qrlhf/core';
import { SFT_FIELDS, applySftOverrides, loadSftConfig, loadSftConfigFile, parseSftConfig, sftDefaults } from '../src/config.js';
import { tmp } from './fixture.js';

function writeConfig(dir: string, obj: unknown): string {
  const p = join(dir, 'cfg.json');
  writeFileSync(p, typeof obj === 'string' ? obj : JSON.stringify(obj, null, 2));
  return p;
}

test('every key has a default of its kind and a one-line doc', (t) => {
  const d = sftDefaults() as Record<string, unknown>;
  for (const [k, f] of Object.entries(SFT_FIELDS)) {
    t.true(f.doc.length > 10 && !f.doc.includes('\n'), k);
    t.deepEqual(parseSftConfig({ [k]: d[k] }, 'defaults'), { [k]: d[k] }, `default of ${k} passes its own check`);
  }
});

test('a config file: defaults filled in, relative paths resolved against the file folder', (t) => {
  const dir = tmp('cfg');
  mkdirSync(join(dir, 'sub'));
  const p = join(dir, 'sub', 'c.json');
  writeFileSync(p, JSON.stringify({ model: '../m.bin', data: 'd.jsonl', out: '/abs/run', lr: 0.01, loraTargets: 'all-linear' }));
  const c = loadSftConfigFile(p);
  t.is(c.model, join(dir, 'm.bin'));
  t.is(c.data, join(dir, 'sub', 'd.jsonl'));
  t.is(c.out, '/abs/run');
  t.is(c.lr, 0.01);
  t.is(c.loraTargets, 'all-linear');
  t.is(c.loraR, sftDefaults().loraR);
  // flags win, and their paths are relative to the working directory
  const o = applySftOverrides(c, { data: 'x.jsonl', maxSteps: 3, seed: undefined });
  t.is(o.data, resolve('x.jsonl'));
  t.is(o.maxSteps, 3);
  t.is(o.seed, c.seed);
});

test('an unknown key is refused, naming the file and the key, with a suggestion', (t) => {
  const p = writeConfig(tmp('cfg'), { model: 'm', learning_rate: 0.1 });
  const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}: unknown key "learning_rate"`), e!.message);
  const p2 = writeConfig(tmp('cfg'), { maxStep: 3 });
  t.regex(t.throws(() => loadSftConfigFile(p2))!.message, /unknown key "maxStep" \(did you mean "maxSteps"\?\)/);
});

test('mistyped and out-of-range values are refused, naming the file and the key', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ lr: '3e-4' }, /"lr": expected a number/],
    [{ loraR: 2.5 }, /"loraR": expected an integer/],
    [{ loraR: 0 }, /"loraR": expected an integer >= 1/],
    [{ heldOutFraction: 1 }, /"heldOutFraction": expected a number below 1/],
    [{ resume: 'yes' }, /"resume": expected true or false/],
    [{ schedule: 'linear' }, /"schedule": expected one of "cosine", "constant"/],
    [{ loraTargets: ['q_proj', 'qkv'] }, /"loraTargets": .*unknown module "qkv"/],
    [{ loraTargets: [] }, /"loraTargets": expected "all-linear" or a non-empty list/],
    [{ backend: 'gpu' }, /"backend": expected one of/],
  ];
  for (const [obj, re] of cases) {
    const p = writeConfig(tmp('cfg'), obj);
    const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
    t.true(e!.message.startsWith(`${p}: `), e!.message);
    t.regex(e!.message, re);
  }
  t.regex(t.throws(() => applySftOverrides(sftDefaults(), { maxSteps: -1 }))!.message, /^command line: "maxSteps"/);
});

test('a config file that is not JSON names the file and the line', (t) => {
  const p = writeConfig(tmp('cfg'), '{\n  "lr": 0.1,\n  "seed": 3,,\n}\n');
  const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}:3: not valid JSON`), e!.message);
  t.regex(t.throws(() => loadSftConfig(join(tmp('cfg'), 'nope.json')))!.message, /nope\.json: config file not found/);
  t.regex(t.throws(() => loadSftConfigFile(writeConfig(tmp('cfg'), '[1]')))!.message, /expected a JSON object/);
});

test('the shipped configs parse', (t) => {
  for (const name of ['sft-stories260k-hh.json', 'sft-paper.json']) {
    const c = loadSftConfigFile(join(repoRoot(), 'configs', name));
    t.true(c.model.length > 0 && c.data.length > 0, name);
  }
  const paper = loadSftConfigFile(join(repoRoot(), 'configs', 'sft-paper.json'));
  t.is(paper.loraR, 32);
  t.is(paper.loraAlpha, 64);
  t.is(paper.lr, 3e-4);
  t.is(paper.schedule, 'cosine');
  t.is(paper.epochs, 1);
  t.is(paper.maxSteps, 0);
  t.is(paper.microBatchSize * paper.gradAccumSteps, 1024);
  t.is(paper.maxLength, 1024);
  const small = loadSftConfigFile(join(repoRoot(), 'configs', 'sft-stories260k-hh.json'));
  t.is(small.model, resolve(repoRoot(), '..', 'shared', 'data', 'models', 'stories260K', 'stories260K.bin'));
});

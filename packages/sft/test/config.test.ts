import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { QrlhfError, parseConfig, repoRoot } from '@qrlhf/core';
import { SFT_SCHEMA, applySftOverrides, checkSftConfig, loadSftConfig, loadSftConfigFile, sftDefaults } from '../src/config.js';
import { tmp } from './fixture.js';

function writeConfig(dir: string, obj: unknown): string {
  const p = join(dir, 'cfg.json');
  writeFileSync(p, typeof obj === 'string' ? obj : JSON.stringify(obj, null, 2));
  return p;
}

test('every key has a default that passes its own check and a one-line doc', (t) => {
  const d = sftDefaults() as Record<string, unknown>;
  for (const [k, f] of Object.entries(SFT_SCHEMA)) {
    t.true(f.doc.length > 10 && !f.doc.includes('\n'), k);
    t.deepEqual((parseConfig(SFT_SCHEMA, { [k]: d[k] }, 'defaults') as Record<string, unknown>)[k], d[k], k);
  }
});

test('a config file: defaults filled in, relative paths resolved against the file folder', (t) => {
  const dir = tmp('cfg');
  mkdirSync(join(dir, 'sub'));
  const p = join(dir, 'sub', 'c.json');
  writeFileSync(p, JSON.stringify({ '//': 'a comment', model: '../m.bin', data: 'd.jsonl', out: '/abs/run', lr: 0.01, loraTargets: ['all-linear'] }));
  const c = loadSftConfigFile(p);
  t.is(c.model, join(dir, 'm.bin'));
  t.is(c.data, join(dir, 'sub', 'd.jsonl'));
  t.is(c.out, '/abs/run');
  t.is(c.lr, 0.01);
  t.deepEqual(c.loraTargets, ['all-linear']);
  t.is(c.loraR, sftDefaults().loraR);
  // a key the file does not set keeps its default, unresolved (runSft resolves it against the cwd)
  t.is(loadSftConfigFile(writeConfig(tmp('cfg'), { model: 'm' })).out, sftDefaults().out);
  // flags win, kebab-case or camelCase, and their paths are relative to the working directory
  const o = applySftOverrides(c, { data: 'x.jsonl', 'max-steps': 3, seed: undefined, resume: true });
  t.is(o.data, resolve('x.jsonl'));
  t.is(o.maxSteps, 3);
  t.is(o.seed, c.seed);
  t.true(o.resume);
  t.is(applySftOverrides(c, { lr: '5e-3' }).lr, 5e-3);
});

test('an unknown key is refused, naming the file and the key, with a suggestion', (t) => {
  const p = writeConfig(tmp('cfg'), { model: 'm', learning_rate: 0.1 });
  const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}: unknown key "learning_rate"`), e!.message);
  const p2 = writeConfig(tmp('cfg'), { maxStep: 3 });
  t.regex(t.throws(() => loadSftConfigFile(p2))!.message, /unknown key "maxStep" \(did you mean "maxSteps"\?\)/);
  t.regex(t.throws(() => applySftOverrides(sftDefaults(), { 'max-stepz': 3 }))!.message, /^command line: unknown flag --max-stepz \(did you mean --max-steps\?\)/);
});

test('mistyped and out-of-range values are refused, naming the file and the key', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ lr: '3e-4' }, /key "lr": expected a number > 0, got "3e-4"/],
    [{ loraR: 2.5 }, /key "loraR": expected an integer/],
    [{ loraR: 0 }, /key "loraR": expected an integer >= 1/],
    [{ heldOutFraction: 1 }, /key "heldOutFraction": expected a number in \[0, 0.9\]/],
    [{ resume: 'yes' }, /key "resume": expected true or false/],
    [{ schedule: 'linear' }, /key "schedule": expected one of "cosine", "constant"/],
    [{ loraTargets: ['q_proj', 'qkv'] }, /key "loraTargets": expected a list of "q_proj", .*"all-linear", got/],
    [{ loraTargets: 'all-linear' }, /key "loraTargets": expected a list of/],
    [{ backend: 'gpu' }, /key "backend": expected one of/],
  ];
  for (const [obj, re] of cases) {
    const p = writeConfig(tmp('cfg'), obj);
    const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
    t.true(e!.message.startsWith(`${p}: `), e!.message);
    t.regex(e!.message, re);
  }
  t.regex(t.throws(() => applySftOverrides(sftDefaults(), { maxSteps: -1 }))!.message, /^command line: --max-steps: expected an integer >= 0/);
  // what the schema alone cannot say
  const base = { ...sftDefaults(), model: 'm', data: 'd' };
  t.regex(t.throws(() => checkSftConfig({ ...base, model: null }))!.message, /"model" \(--model\) must be set/);
  t.regex(t.throws(() => checkSftConfig({ ...base, lr: 0 }))!.message, /"lr": expected a number > 0/);
  t.regex(t.throws(() => checkSftConfig({ ...base, loraTargets: [] }))!.message, /"loraTargets": expected a non-empty list/);
  t.regex(t.throws(() => checkSftConfig({ ...base, loraTargets: ['all-linear', 'q_proj'] }))!.message, /\["all-linear"\] alone/);
});

test('a config file that is not JSON names the file and the line', (t) => {
  const p = writeConfig(tmp('cfg'), '{\n  "lr": 0.1,\n  "seed": 3,,\n}\n');
  const e = t.throws(() => loadSftConfigFile(p), { instanceOf: QrlhfError });
  t.true(e!.message.startsWith(`${p}:3:`), e!.message);
  t.regex(e!.message, /invalid JSON/);
  t.regex(t.throws(() => loadSftConfig(join(tmp('cfg'), 'nope.json')))!.message, /nope\.json: no such config file/);
  t.regex(t.throws(() => loadSftConfigFile(writeConfig(tmp('cfg'), '[1]')))!.message, /expected a JSON object/);
});

test('the shipped configs parse, the paper one with the paper hyperparameters', (t) => {
  for (const name of ['sft-stories260k-hh.json', 'sft-paper.json']) {
    const c = checkSftConfig(loadSftConfigFile(join(repoRoot(), 'configs', name)), name);
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
  t.is(small.data, resolve(repoRoot(), '..', 'shared', 'data', 'hh-rlhf', 'harmless-base-test.jsonl.gz'));
});

import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LlamaModel, Rng, characterTokenizer, readSafetensors, repoRoot, saveHfFolder, type LlamaConfig } from '@qrlhf/core';
import { QuantileRewardModel } from '@qrlhf/qrm';
import { qrmCommand } from '../src/commands/qrm.js';
import { runInProcess } from './cli-helpers.js';

const run = promisify(execFile);
const tinyLlama: LlamaConfig = {
  vocabSize: 40, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 128, bosTokenId: 1, eosTokenId: 2,
};
const root = repoRoot();

async function qrlhf(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['--conditions=source', '--import=tsx', join(root, 'packages/cli/src/bin.ts'), ...args], { cwd: root, maxBuffer: 1 << 24 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

const inProcess = (...args: string[]) => runInProcess(qrmCommand, args);

test('qrlhf qrm: features -> fit -> gate -> score -> eval on a tiny backbone, and one-line errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-cli-'));
  const model = LlamaModel.random(tinyLlama, 3);
  await saveHfFolder(join(dir, 'bb'), model, characterTokenizer());
  model.dispose();
  const rng = new Rng(1);
  const words = ['good', 'bad', 'long answer here', 'no', 'yes indeed', 'a cat'];
  const ratings = Array.from({ length: 30 }, (_, i) => {
    const response = ` ${words[rng.int(6)]} ${words[rng.int(6)]}`;
    return { prompt: `\n\nHuman: q${'abc'[i % 3]}?\n\nAssistant:`, response, helpfulness: rng.normal(), verbosity: response.length };
  });
  writeFileSync(join(dir, 'ratings.jsonl'), ratings.map((r) => JSON.stringify(r)).join('\n'));
  const pairs = Array.from({ length: 12 }, (_, i) => ({
    prompt: `\n\nHuman: q${'abc'[i % 3]}?\n\nAssistant:`, chosen: ` good ${words[rng.int(6)]}`, rejected: ` bad ${words[rng.int(6)]}`,
    subset: i % 2 ? 'llmbar-natural' : 'alpacaeval-easy',
  }));
  writeFileSync(join(dir, 'pairs.jsonl'), pairs.map((r) => JSON.stringify(r)).join('\n'));

  const subs = ['features', 'fit', 'gate', 'score', 'eval'];
  for (const sub of subs) t.regex(await inProcess('qrm', sub, '--help'), new RegExp(`qrlhf qrm ${sub}\\b[^]*--help`));

  const s1 = join(dir, 's1.safetensors');
  const s2 = join(dir, 's2.safetensors');
  await inProcess('qrm', 'features', '--model', join(dir, 'bb'), '--ratings', join(dir, 'ratings.jsonl'), '--out', s1, '--backend', 'cpu');
  await inProcess('qrm', 'features', '--model', join(dir, 'bb'), '--pairs', join(dir, 'pairs.jsonl'), '--out', s2, '--backend', 'cpu');
  const f1 = readSafetensors(s1);
  t.deepEqual(f1.tensors['embeddings']!.shape, [30, 16]);
  t.deepEqual(f1.tensors['labels']!.shape, [30, 2]);
  t.deepEqual(JSON.parse(f1.metadata['attributes']!), ['helpfulness', 'verbosity']);
  t.deepEqual(readSafetensors(s2).tensors['prompt_embeddings']!.shape, [12, 2, 16]);

  const out = join(dir, 'qrm');
  await inProcess('qrm', 'fit', '--features', s1, '--out', out, '--quantiles', '3', '--alpha', '0.01', '--max-rows', '25');
  const heads = readSafetensors(join(out, 'heads.safetensors')).tensors;
  t.deepEqual(heads['weight']!.shape, [2, 3, 16]);
  t.deepEqual(heads['bias']!.shape, [2, 3]);
  t.deepEqual(Array.from(heads['taus']!.data), [0.25, 0.5, 0.75]);

  // the summary line goes to stderr: run this one as a real process to read it
  const gate = await qrlhf('qrm', 'gate', '--heads', out, '--pairs', s2, '--out', out, '--hidden', '8', '--epochs', '2', '--batch-size', '4', '--backend', 'cpu');
  t.is(gate.code, 0, gate.stderr);
  t.regex(gate.stderr, /verbosity "verbosity", penalties helpfulness [\d.]+, verbosity 1/);
  const qrm = await QuantileRewardModel.load(out);
  t.is(qrm.gate.config.hiddenSize, 8);
  t.truthy(qrm.backbonePath && existsSync(qrm.backbonePath), 'the backbone is recorded and resolvable');
  qrm.dispose();

  writeFileSync(join(dir, 'in.jsonl'), JSON.stringify({ prompt: pairs[0]!.prompt, response: pairs[0]!.chosen }) + '\n');
  await inProcess('qrm', 'score', '--model', out, '--input', join(dir, 'in.jsonl'), '--out', join(dir, 'scores.jsonl'), '--utility', 'certainty-equivalent', '--lambda', '2', '--backend', 'cpu');
  const rec = JSON.parse(readFileSync(join(dir, 'scores.jsonl'), 'utf8').trim()) as { quantiles: number[]; expectation: number; utility: number };
  t.is(rec.quantiles.length, 3);
  const ce = -Math.log(rec.quantiles.reduce((a, q) => a + Math.exp(-2 * q), 0) / 3) / 2;
  t.true(Math.abs(rec.utility - ce) < 1e-6);

  const ev = await qrlhf('qrm', 'eval', '--model', out, '--data', join(dir, 'pairs.jsonl'), '--out', join(dir, 'eval.json'), '--backend', 'cpu');
  t.is(ev.code, 0, ev.stderr);
  t.regex(ev.stdout, /\[Chat Hard\]\s+[\d.]+\noverall\s+[\d.]+/);
  const res = JSON.parse(readFileSync(join(dir, 'eval.json'), 'utf8')) as { counts: Record<string, number>; overall: number };
  t.deepEqual(res.counts, { 'alpacaeval-easy': 6, 'llmbar-natural': 6 });
  t.true(res.overall >= 0 && res.overall <= 1);

  // user faults: one line, exit 1
  const [bad, wrong, kind] = await Promise.all([
    qrlhf('qrm', 'fit', '--features', join(dir, 'nope.safetensors'), '--out', out),
    qrlhf('qrm', 'gate', '--heads', out, '--pairs', s1, '--out', join(dir, 'x'), '--backend', 'cpu'),
    // a non-empty folder of another kind (the backbone's) is refused before the work (issue 12 item 13)
    qrlhf('qrm', 'gate', '--heads', out, '--pairs', s2, '--out', join(dir, 'bb'), '--backend', 'cpu'),
  ]);
  t.is(kind.code, 1);
  t.is(kind.stderr.trim(), `qrlhf: ${join(dir, 'bb')}: the folder is not empty and holds no qrm run; choose another --out (or an empty folder)`);
  t.false(existsSync(join(dir, 'bb', 'gate.safetensors')));
  t.is(bad.code, 1);
  t.is(bad.stderr.trim(), `qrlhf: --features ${join(dir, 'nope.safetensors')}: no such file`);
  t.is(wrong.code, 1);
  t.regex(wrong.stderr, /s1\.safetensors: expected a tensor "embeddings" \[N, 2, d\]/);
});

// Issue 12's silent wrong results and unclear errors, each as the user meets it on the command
// line: one "qrlhf: ..." line naming the file, the row/column or tensor, exit 1, nothing written.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LlamaModel, QrlhfError, Rng, Tokenizer, readSafetensors, repoRoot, saveHfFolder, writeSafetensors } from '@qrlhf/core';
import { GateNetwork, QuantileRewardModel, fitQuantileHeads, loadUtilityModule } from '@qrlhf/qrm';
import { charTokenizer, tinyLlama } from './reference.js';

const run = promisify(execFile);
const root = repoRoot();
const dir = mkdtempSync(join(tmpdir(), 'qrlhf-faults-'));
const d = tinyLlama.hiddenSize;

async function qrlhf(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ['--conditions=source', '--import=tsx', join(root, 'packages/cli/src/bin.ts'), ...args], { cwd: root });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** Exit 1 and one message line (besides the backend line) matching `re`. */
async function refused(t: import('ava').ExecutionContext, args: string[], re: RegExp): Promise<void> {
  const r = await qrlhf(...args);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('backend:'));
  t.is(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
  t.is(lines.length, 1, r.stderr);
  t.regex(lines[0] ?? '', re);
}

/** A stage-1 features file with the given embeddings and labels. */
function features(name: string, n: number, emb: (i: number, j: number) => number, labels: number[][], attributes = ['helpfulness', 'verbosity']): string {
  const p = join(dir, name);
  writeSafetensors(
    p,
    {
      embeddings: { dtype: 'F32', shape: [n, d], data: Float32Array.from({ length: n * d }, (_, k) => emb(Math.floor(k / d), k % d)) },
      labels: { dtype: 'F32', shape: [n, attributes.length], data: Float32Array.from(labels.flat()) },
    },
    { attributes: JSON.stringify(attributes) },
  );
  return p;
}

const rng = new Rng(5);
const okEmb = () => rng.normal();
const labels = (n: number) => Array.from({ length: n }, (_, i) => [i % 3, i % 5]);
const nanAt = (r: number, c: number) => (i: number, j: number) => (i === r && j === c ? NaN : rng.normal());

// A backbone folder, the same with one NaN weight, a ratings file, a QRM folder with one NaN head.
const bb = join(dir, 'bb');
const bbNan = join(dir, 'bb-nan');
const qrmNan = join(dir, 'qrm-nan');
const qrmShort = join(dir, 'qrm-short');
const ratings = join(dir, 'ratings.jsonl');
const rows = join(dir, 'rows.jsonl');
const short = join(dir, 'short.jsonl');
test.before(async () => {
  const model = LlamaModel.random(tinyLlama, 3);
  await saveHfFolder(bb, model, charTokenizer());
  await saveHfFolder(bbNan, model, charTokenizer());
  model.dispose();
  const w = join(bbNan, 'model.safetensors');
  const st = readSafetensors(w);
  (st.tensors['model.layers.1.mlp.up_proj.weight']!.data as Float32Array)[7] = NaN;
  writeSafetensors(w, st.tensors, st.metadata);
  writeFileSync(ratings, ['a', 'b', 'c'].map((x, i) => JSON.stringify({ prompt: `q${x}:`, response: ` ${x}`, helpfulness: i, verbosity: 1 })).join('\n') + '\n');
  writeFileSync(short, JSON.stringify({ prompt: 'qa:', response: ' a' }) + '\n');
  writeFileSync(rows, JSON.stringify({ prompt: 'qa:', response: ' a' }) + '\n' + JSON.stringify({ prompt: 'qb:', response: ' ' + 'b'.repeat(40) }) + '\n');
  const M = 2;
  const K = 3;
  const heads = { weight: Float32Array.from({ length: M * K * d }, () => 0.01 * rng.normal()), bias: new Float32Array(M * K), taus: Float32Array.from([0.25, 0.5, 0.75]), attributes: ['helpfulness', 'verbosity'], d };
  for (const [folder, maxTokens] of [[qrmNan, null], [qrmShort, 16]] as const) {
    const q = new QuantileRewardModel({ heads, gate: GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: 8, numHidden: 1 }, new Rng(1)), verbosity: null, debiasPenalties: [0, 0], backbone: bb, maxTokens, features: null });
    await q.save(folder);
    q.dispose();
  }
  const h = join(qrmNan, 'heads.safetensors');
  const hs = readSafetensors(h);
  (hs.tensors['weight']!.data as Float32Array)[d + 2] = NaN; // [0, 1, 2]
  writeSafetensors(h, hs.tensors, hs.metadata);
  writeFileSync(join(dir, 'boom.mjs'), 'export default function utility() { throw new Error("boom"); }\n');
});

test('2: non-finite features or labels, no rows, an unrated attribute: qrm fit refuses up front, naming file and place', async (t) => {
  const nanEmb = features('nan-emb.safetensors', 6, nanAt(2, 3), labels(6));
  const infLab = features('inf-lab.safetensors', 6, okEmb, labels(6).map((r, i) => (i === 4 ? [r[0]!, Infinity] : r)));
  const empty = features('empty.safetensors', 0, okEmb, []);
  const unrated = features('unrated.safetensors', 4, okEmb, labels(4).map((r) => [r[0]!, NaN]));
  await Promise.all([
    refused(t, ['qrm', 'fit', '--features', nanEmb, '--out', join(dir, 'fit1')], /^qrlhf: .*nan-emb\.safetensors: "embeddings" row 3, column 4 is NaN: features must be finite/),
    refused(t, ['qrm', 'fit', '--features', infLab, '--out', join(dir, 'fit2')], /^qrlhf: .*inf-lab\.safetensors: "labels" row 5, attribute "verbosity" is Infinity/),
    refused(t, ['qrm', 'fit', '--features', empty, '--out', join(dir, 'fit3')], /^qrlhf: .*empty\.safetensors: no rows/),
    refused(t, ['qrm', 'fit', '--features', unrated, '--out', join(dir, 'fit4')], /^qrlhf: .*unrated\.safetensors: attribute "verbosity" has no rated row \(all 4 labels NaN\)$/),
  ]);
  for (const k of [1, 2, 3, 4]) t.false(existsSync(join(dir, `fit${k}`)), 'nothing written');
  // the library says it before solving anything, too
  const x = Float32Array.from({ length: 4 * d }, (_, k) => (k === d + 1 ? NaN : 1));
  await t.throwsAsync(fitQuantileHeads(x, 4, d, Float32Array.from([0, 1, 0, 1]), { attributes: ['a'] }), { instanceOf: QrlhfError, message: /^features: row 1, column 1 is NaN \(from 0\)/ });
  await t.throwsAsync(fitQuantileHeads(new Float32Array(4 * d), 4, d, Float32Array.from([0, NaN, 1, NaN, 0, NaN, 1, NaN]), { attributes: ['a', 'b'] }), {
    message: /^labels: attribute "b" has no labelled row/,
  });
});

test('3: a NaN weight in a model or in heads.safetensors fails at load, naming the file and the tensor', async (t) => {
  const feat = join(dir, 'f-nan.safetensors');
  await Promise.all([
    refused(t, ['qrm', 'features', '--model', bbNan, '--ratings', ratings, '--out', feat, '--backend', 'cpu'], /^qrlhf: .*bb-nan\/model\.safetensors: tensor "model\.layers\.1\.mlp\.up_proj\.weight" holds a non-finite value \(NaN\) at \[0, 7\]/),
    refused(t, ['generate', '--model', bbNan, '--backend', 'cpu', '--max-new-tokens', '3'], /model\.safetensors: tensor "model\.layers\.1\.mlp\.up_proj\.weight" holds a non-finite value/),
    refused(t, ['qrm', 'score', '--model', qrmNan, '--input', rows, '--backend', 'cpu'], /^qrlhf: .*qrm-nan\/heads\.safetensors: tensor "weight" holds a non-finite value \(NaN\) at \[0, 1, 2\]/),
  ]);
  t.false(existsSync(feat));
  t.false(existsSync(`${feat}.parts`));
});

test('4: qrm features --attributes with a name no row has is refused before any work', async (t) => {
  const out = join(dir, 'f-typo.safetensors');
  await refused(t, ['qrm', 'features', '--model', bb, '--ratings', ratings, '--attributes', 'helpfulnes,verbosity', '--out', out, '--backend', 'cpu'],
    /^qrlhf: .*ratings\.jsonl: attribute "helpfulnes" is in no row \(of 3 rows; the rows have "helpfulness", "verbosity"\)$/);
  t.false(existsSync(out));
  t.false(existsSync(`${out}.parts`));
});

test('8: a utility module that throws, a JSON file that is no tokenizer, a too-long response in qrm eval', async (t) => {
  const evalData = join(dir, 'eval.jsonl');
  writeFileSync(evalData, JSON.stringify({ prompt: 'qa:', chosen: ' a', rejected: ' ' + 'b'.repeat(40), subset: 's' }) + '\n');
  await Promise.all([
    refused(t, ['qrm', 'score', '--model', qrmShort, '--input', short, '--utility', join(dir, 'boom.mjs'), '--backend', 'cpu'], /^qrlhf: utility module .*boom\.mjs: threw when called \(boom\)$/),
    // no --max-tokens advice where the command has no such flag
    refused(t, ['qrm', 'eval', '--model', qrmShort, '--data', evalData, '--backend', 'cpu'], /^qrlhf: pair 1 \(rejected\): the response alone is 41 tokens, over the 16-token limit \(the QRM's maxTokens in qrm\.json\)$/),
  ]);
  const u = await loadUtilityModule(join(dir, 'boom.mjs'));
  t.throws(() => u(new Float32Array([1]), new Float32Array([0.5])), { instanceOf: QrlhfError, message: /boom\.mjs: threw when called \(boom\)/ });
  const bad = (json: unknown, re: RegExp) => t.throws(() => Tokenizer.fromJSON(json, { where: 't.json' }), { instanceOf: QrlhfError, message: re });
  bad({ model: { type: 'BPE' } }, /^t\.json: "model\.vocab" is missing: a BPE tokenizer needs it as an object$/);
  bad({ model: { type: 'BPE', vocab: {} } }, /"model\.merges" is missing/);
  bad({ model: { type: 'Sentence' } }, /"model\.type" is "Sentence": expected one of BPE, WordPiece, WordLevel, Unigram/);
  bad({ model: { type: 'BPE', vocab: { a: 0 }, merges: [] }, added_tokens: 3 }, /"added_tokens" must be a list/);
  mkdirSync(join(dir, 'scratch'), { recursive: true });
  t.deepEqual(readdirSync(join(dir, 'scratch')), []);
});

test('7: an output path of the wrong kind, or under a file, is refused before the work, leaving nothing', async (t) => {
  const folder = join(dir, 'a-folder');
  mkdirSync(folder, { recursive: true });
  const file = join(dir, 'a-file');
  writeFileSync(file, 'x');
  const good = features('good.safetensors', 6, okEmb, labels(6));
  await Promise.all([
    refused(t, ['qrm', 'fit', '--features', good, '--out', file], /^qrlhf: .*a-file: exists and is not a folder$/),
    refused(t, ['qrm', 'fit', '--features', good, '--out', join(file, 'sub')], /^qrlhf: .*a-file\/sub: cannot write: .*a-file is a file, not a folder \(ENOTDIR\)$/),
    refused(t, ['qrm', 'score', '--model', qrmShort, '--input', short, '--out', folder, '--backend', 'cpu'], /^qrlhf: .*a-folder: is a folder; expected the path of a file to write$/),
    refused(t, ['qrm', 'eval', '--model', qrmShort, '--data', rows, '--out', folder, '--backend', 'cpu'], /^qrlhf: .*a-folder: is a folder; expected the path of a file to write$/),
    refused(t, ['qrm', 'features', '--model', bb, '--ratings', ratings, '--out', folder, '--backend', 'cpu'], /^qrlhf: .*a-folder: is a folder; expected the path of a file to write$/),
    refused(t, ['bench', '--suite', 'matmul', '--json', folder], /^qrlhf: .*a-folder: is a folder; expected the path of a file to write$/),
  ]);
  t.deepEqual(readdirSync(folder), []);
  t.false(readdirSync(dir).some((f) => f.includes('.tmp-') || f.endsWith('.parts')), readdirSync(dir).join(', '));
});


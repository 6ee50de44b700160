/**
 * Features that say how they were made (issue 13 item 6, provenance.ts): `qrm features` records
 * pooling, max tokens, backbone, tokenizer, chat template and engine; `qrm fit` carries the record
 * into the heads; `qrm gate` refuses heads and pairs that disagree on any of them with one error
 * naming both files and values, and writes the record (and beta) into qrm.json; scoring refuses a
 * backbone or tokenizer other than the one the features came from. Old files: one warning line.
 */
import test from 'ava';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, QrlhfError, Rng, characterTokenizer, initBackend, readSafetensors, saveHfFolder, writeSafetensors, type LlamaConfig } from '@qrlhf/core';
import {
  FEATURE_ENGINE_SCHEMA, QRM_FEATURES_SCHEMA, QRM_FIT_SCHEMA, QRM_GATE_SCHEMA, QuantileRewardModel,
  backboneFingerprint, runQrmFeatures, runQrmFit, runQrmGate, type FeatureProvenance,
} from '@qrlhf/qrm';
import { defaultConfig } from '@qrlhf/core';

const CONFIG: LlamaConfig = {
  vocabSize: 40, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 128, bosTokenId: 1, eosTokenId: 2,
};
const dir = mkdtempSync(join(tmpdir(), 'qrlhf-provenance-'));
const quiet = { quiet: true };

/** stderr lines written while fn runs. */
async function stderrOf<T>(fn: () => Promise<T>): Promise<{ value: T; lines: string[] }> {
  const write = process.stderr.write.bind(process.stderr);
  let text = '';
  process.stderr.write = ((chunk: string | Uint8Array) => ((text += String(chunk)), true)) as typeof process.stderr.write;
  try {
    const value = await fn();
    return { value, lines: text.split('\n').filter((l) => l.trim() !== '') };
  } finally {
    process.stderr.write = write;
  }
}

const features = (over: Record<string, unknown>) =>
  runQrmFeatures({ ...defaultConfig(QRM_FEATURES_SCHEMA), engine: defaultConfig(FEATURE_ENGINE_SCHEMA), backend: 'cpu', ...over } as Parameters<typeof runQrmFeatures>[0], quiet);
const gate = (over: Record<string, unknown>) =>
  runQrmGate({ ...defaultConfig(QRM_GATE_SCHEMA), hidden: 8, layers: 1, epochs: 1, batchSize: 8, backend: 'cpu', ...over } as Parameters<typeof runQrmGate>[0], quiet);

/** A copy of a features file with its provenance edited (or removed, for an old file). */
function withProvenance(src: string, name: string, edit: ((p: FeatureProvenance) => FeatureProvenance) | null): string {
  const { tensors, metadata } = readSafetensors(src);
  const out = join(dir, name);
  const meta = { ...metadata };
  if (edit) meta['provenance'] = JSON.stringify(edit(JSON.parse(metadata['provenance']!) as FeatureProvenance));
  else delete meta['provenance'];
  writeSafetensors(out, tensors as Parameters<typeof writeSafetensors>[1], meta);
  return out;
}

const bbA = join(dir, 'bbA');
const bbB = join(dir, 'bbB');
const bbT = join(dir, 'bbT');
const ratings = join(dir, 'ratings.jsonl');
const pairs = join(dir, 'pairs.jsonl');
const f = {} as Record<'ratings' | 'pairs' | 'mean' | 'short' | 'otherBackbone' | 'otherTokenizer', string>;
const headsDir = join(dir, 'heads');

test.before(async () => {
  await initBackend('cpu', { quiet: true });
  // A and B: two backbones of the same shape; T: A's weights with another tokenizer (letters in another order)
  for (const [path, seed, tok] of [[bbA, 3, characterTokenizer()], [bbB, 4, characterTokenizer()], [bbT, 3, characterTokenizer(" zyxwvutsrqponmlkjihgfedcba:.\n,?!HA'")]] as const) {
    const m = LlamaModel.random(CONFIG, seed);
    await saveHfFolder(path, m, tok);
    m.dispose();
  }
  const rng = new Rng(1);
  const words = ['good', 'bad', 'long answer here', 'no', 'yes indeed', 'a cat'];
  writeFileSync(ratings, Array.from({ length: 24 }, (_, i) => {
    const response = ` ${words[rng.int(6)]} ${words[rng.int(6)]}`;
    return JSON.stringify({ prompt: `\n\nHuman: q${'abc'[i % 3]}?\n\nAssistant:`, response, helpfulness: rng.next(), verbosity: response.length / 40 });
  }).join('\n'));
  writeFileSync(pairs, Array.from({ length: 16 }, (_, i) => JSON.stringify({
    prompt: `\n\nHuman: q${'abc'[i % 3]}?\n\nAssistant:`, chosen: ` good ${words[rng.int(6)]}`, rejected: ` bad ${words[rng.int(6)]}`,
  })).join('\n'));
  const made: [keyof typeof f, Record<string, unknown>][] = [
    ['ratings', { model: bbA, ratings }],
    ['pairs', { model: bbA, pairs }],
    ['mean', { model: bbA, pairs, pooling: 'mean' }],
    ['short', { model: bbA, pairs, maxTokens: 64 }],
    ['otherBackbone', { model: bbB, pairs }],
    ['otherTokenizer', { model: bbT, pairs }],
  ];
  for (const [key, over] of made) {
    f[key] = join(dir, `${key}.safetensors`);
    await features({ ...over, out: f[key] });
  }
  await runQrmFit({ ...defaultConfig(QRM_FIT_SCHEMA), features: f.ratings, out: headsDir, quantiles: 3, labelScale: 'none', lpMaxCells: 0 }, quiet);
});

test.serial('qrm features records pooling, max tokens, backbone, tokenizer, chat template and engine; qrm fit carries it into the heads', (t) => {
  const p = JSON.parse(readSafetensors(f.pairs).metadata['provenance']!) as FeatureProvenance;
  t.is(p.pooling, 'last');
  t.is(p.maxTokens, 128, "the model's context when --max-tokens is not given");
  t.is(p.backbone.path, bbA);
  t.deepEqual({ config: p.backbone.config, weights: p.backbone.weights }, backboneFingerprint(bbA));
  t.regex(p.backbone.weights!, /^[0-9a-f]{16}$/);
  t.deepEqual(p.engine, { kind: 'local' });
  t.deepEqual({ setting: p.chatTemplate.setting, name: p.chatTemplate.name, fingerprint: p.chatTemplate.fingerprint }, { setting: 'auto', name: 'hh', fingerprint: 'hh' });
  const other = (file: string) => JSON.parse(readSafetensors(file).metadata['provenance']!) as FeatureProvenance;
  t.is(other(f.mean).pooling, 'mean');
  t.is(other(f.short).maxTokens, 64);
  t.not(other(f.otherBackbone).backbone.weights, p.backbone.weights);
  t.is(other(f.otherBackbone).backbone.config, p.backbone.config, 'same shape: the config alone does not tell them apart');
  t.is(other(f.otherTokenizer).backbone.weights, p.backbone.weights, 'same weights');
  t.not(other(f.otherTokenizer).tokenizer.fingerprint, p.tokenizer.fingerprint);
  // a copy of the backbone elsewhere has the same fingerprint (no path or mtime in it)
  cpSync(bbA, join(dir, 'bbA-copy'), { recursive: true });
  t.deepEqual(backboneFingerprint(join(dir, 'bbA-copy')), backboneFingerprint(bbA));
  const heads = readSafetensors(join(headsDir, 'heads.safetensors')).metadata;
  t.deepEqual(JSON.parse(heads['provenance']!), JSON.parse(readSafetensors(f.ratings).metadata['provenance']!));
  t.is(heads['features_file'], f.ratings);
});

test.serial('qrm gate refuses heads and pairs that disagree, one error per mismatch naming both files and values', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['pooling', f.mean, /heads fitted on features pooled 'last' \(.*ratings\.safetensors.*\), pairs pooled 'mean' \(.*mean\.safetensors\);.* --pooling$/],
    ['max tokens', f.short, /heads fitted on features cut to 128 tokens .*, pairs cut to 64 tokens \(.*short\.safetensors\);.* --max-tokens$/],
    ['backbone', f.otherBackbone, /heads fitted on features of backbone .*bbA \(config \w+, weights (\w+)\) .*, pairs of backbone .*bbB \(config \w+, weights (?!\1)\w+\) \(.*otherBackbone\.safetensors\);.* --model \(the backbone\)$/],
    ['tokenizer', f.otherTokenizer, /heads fitted on features tokenized by the backbone's tokenizer \(fingerprint (\w+)\) .*, pairs tokenized by the backbone's tokenizer \(fingerprint (?!\1)\w+\) .*; .* --tokenizer$/],
    ['chat template', withProvenance(f.pairs, 'template.safetensors', (p) => ({ ...p, chatTemplate: { setting: '/t/chat.jinja', name: '/t/chat.jinja', fingerprint: '0123456789abcdef' } })),
      /heads fitted on features written as HH text \(chatTemplate 'auto', fingerprint hh\) .*, pairs written as chat template \/t\/chat\.jinja \(chatTemplate '\/t\/chat\.jinja', fingerprint 0123456789abcdef\) \(.*template\.safetensors\); .* --chat-template$/],
    ['engine', withProvenance(f.pairs, 'engine.safetensors', (p) => ({ ...p, engine: { kind: 'openai', model: 'bb' } })),
      /heads fitted on features computed by the local engine .*, pairs computed by the openai engine \(model bb\) \(.*engine\.safetensors\); .* --engine\.kind$/],
  ];
  for (const [field, pairsFile, message] of cases) {
    const out = join(dir, `gate-${field.replace(' ', '-')}`);
    const e = await t.throwsAsync(gate({ heads: headsDir, pairs: pairsFile, out }), { instanceOf: QrlhfError }, field);
    t.regex(e!.message, /^qrm gate: /, field);
    t.regex(e!.message, message, field);
    t.is(e!.message.split('; ').filter((s) => s.includes(' pairs ')).length, 1, `${field}: only the field that differs is named`);
  }
  // the same check between the pairs and a reference set
  const e = await t.throwsAsync(gate({ heads: headsDir, pairs: f.pairs, reference: f.mean, out: join(dir, 'gate-ref') }), { instanceOf: QrlhfError });
  t.regex(e!.message, /reference pooled 'mean'/);
  // a --pooling that contradicts the features
  const p = await t.throwsAsync(gate({ heads: headsDir, pairs: f.pairs, pooling: 'mean', out: join(dir, 'gate-flag') }), { instanceOf: QrlhfError });
  t.regex(p!.message, /^qrm gate: --pooling mean, but the heads fitted on features .* were pooled 'last'/);
});

const qrmDir = join(dir, 'qrm');

test.serial('matching features are accepted: qrm.json records them, maxTokens, pooling and beta; scoring checks the backbone and tokenizer', async (t) => {
  const { lines } = await stderrOf(() => gate({ heads: headsDir, pairs: f.pairs, out: qrmDir }));
  t.deepEqual(lines.filter((l) => /warning/.test(l)), [], 'no warning when every file records its provenance');
  const j = JSON.parse(readFileSync(join(qrmDir, 'qrm.json'), 'utf8')) as Record<string, unknown>;
  t.deepEqual(j['features'], JSON.parse(readSafetensors(f.pairs).metadata['provenance']!));
  t.is(j['maxTokens'], 128);
  t.is(j['pooling'], 'last');
  const qrm = await QuantileRewardModel.load(qrmDir);
  t.is(j['beta'], await qrm.beta());
  const items = [{ prompt: '\n\nHuman: qa?\n\nAssistant:', response: ' good no' }, { prompt: '\n\nHuman: qb?\n\nAssistant:', response: ' bad' }];
  // the gate summary: mean gate weights sum to beta, the penalties by name
  const g = await qrm.gateSummary(items);
  t.is(g.n, 2);
  t.true(Math.abs(Object.values(g.meanGate).reduce((a, b) => a + b, 0) - g.beta) < 1e-5);
  const scores = await qrm.score(items);
  for (const [m, a] of qrm.attributes.entries()) t.true(Math.abs(g.meanGate[a]! - (scores[0]!.gate[m]! + scores[1]!.gate[m]!) / 2) < 1e-6);
  t.deepEqual(g.debiasPenalties, Object.fromEntries(qrm.attributes.map((a, m) => [a, qrm.debiasPenalties[m]!])));
  qrm.dispose();
  // another backbone of the same shape, and the right weights with another tokenizer: refused at the first score
  for (const [bb, re] of [[bbB, /of backbone .*bbB \(config \w+, weights \w+\) \(.*bbB\); .* --model \(the backbone\)$/], [bbT, /tokenized by .*; .* --tokenizer$/]] as const) {
    const q = await QuantileRewardModel.load(qrmDir);
    q.backbonePath = bb;
    const e = await t.throwsAsync(q.score(items), { instanceOf: QrlhfError });
    t.regex(e!.message, new RegExp(`^QRM: trained on features .*\\(${join(qrmDir, 'qrm.json').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\), scoring with features`));
    t.regex(e!.message, re);
    q.dispose();
  }
  // a copy of the right backbone elsewhere is accepted
  const q = await QuantileRewardModel.load(qrmDir);
  q.backbonePath = join(dir, 'bbA-copy');
  t.is((await q.score(items)).length, 2);
  q.dispose();
});

test.serial('old feature files without provenance are accepted with one warning line; a QRM trained on them warns when scoring', async (t) => {
  const oldRatings = withProvenance(f.ratings, 'old-ratings.safetensors', null);
  const oldPairs = withProvenance(f.pairs, 'old-pairs.safetensors', null);
  const oldHeads = join(dir, 'old-heads');
  const fit = await stderrOf(() => runQrmFit({ ...defaultConfig(QRM_FIT_SCHEMA), features: oldRatings, out: oldHeads, quantiles: 3, labelScale: 'none', lpMaxCells: 0 }, quiet));
  t.deepEqual(fit.lines, [`qrlhf: warning: qrm fit: ${oldRatings} records no feature provenance (written by an older qrlhf): pooling, max tokens, backbone, tokenizer and chat template are not checked; rerun qrm features to record them`]);
  const out = join(dir, 'qrm-old');
  const g = await stderrOf(() => gate({ heads: oldHeads, pairs: oldPairs, out }));
  t.is(g.lines.length, 1);
  t.regex(g.lines[0]!, /^qrlhf: warning: qrm gate: .*old-heads\/heads\.safetensors, .*old-pairs\.safetensors record no feature provenance/);
  const j = JSON.parse(readFileSync(join(out, 'qrm.json'), 'utf8')) as Record<string, unknown>;
  t.false('features' in j, 'nothing recorded, so scoring knows it is unchecked');
  // an old heads file with new pairs: still one warning, and the pairs' record goes to qrm.json
  const mixed = await stderrOf(() => gate({ heads: oldHeads, pairs: f.pairs, out: join(dir, 'qrm-mixed') }));
  t.is(mixed.lines.filter((l) => /warning/.test(l)).length, 1);
  const q = await QuantileRewardModel.load(out);
  const s = await stderrOf(() => q.score([{ prompt: '\n\nHuman: qa?\n\nAssistant:', response: ' good' }]));
  t.deepEqual(s.lines, [`qrlhf: warning: QRM: ${join(out, 'qrm.json')} records no feature provenance (written by an older qrlhf): pooling, max tokens, backbone, tokenizer and chat template are not checked; rerun qrm features to record them`]);
  await q.score([{ prompt: '\n\nHuman: qb?\n\nAssistant:', response: ' bad' }]);
  q.dispose();
});

test.serial('a hand-edited qrm.json whose pooling or maxTokens contradicts its features is refused at load', async (t) => {
  const edited = join(dir, 'qrm-edited');
  cpSync(qrmDir, edited, { recursive: true });
  const path = join(edited, 'qrm.json');
  const j = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  writeFileSync(path, JSON.stringify({ ...j, pooling: 'mean' }));
  const e = await t.throwsAsync(QuantileRewardModel.load(edited), { instanceOf: QrlhfError });
  t.regex(e!.message, /qrm\.json: "pooling" is 'mean' but its features were pooled 'last'/);
  writeFileSync(path, JSON.stringify({ ...j, maxTokens: 32 }));
  const m = await t.throwsAsync(QuantileRewardModel.load(edited), { instanceOf: QrlhfError });
  t.regex(m!.message, /qrm\.json: "maxTokens" is 32 but its features were cut to 128 tokens/);
});

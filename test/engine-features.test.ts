/**
 * QRM features through an engine: `qrlhf qrm features --engine openai` against a real `qrlhf serve`
 * equals the in-process extraction within 1e-5 (stage 1 and stage 2), records the engine and model
 * in the metadata, and resumes an interrupted extraction from its finished shards.
 */
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer, initBackend, loadModel, readSafetensors } from '@qrlhf/core';
import { extractRatingFeatures, openAiFeatureSource, readPairFeatures, readRatingFeatures, type FeatureSource } from '@qrlhf/qrm';
import { tmp, tinyConfig, writeTinyPolicy } from '../packages/rloo/test/fixture.js';
import { qrlhf } from '../packages/cli/test/cli-helpers.js';
import { startServe, type ServeProcess } from './engine-helpers.js';

const dir = tmp('features');
let server: ServeProcess | null = null;
let policy = '';
const ratings = join(dir, 'ratings.jsonl');
const pairs = join(dir, 'pairs.jsonl');
const WORDS = ['owls hoot', 'tea is warm', 'rain falls', 'bees buzz', 'ink dries', 'figs ripen', 'moss grows'];

test.before(async () => {
  await initBackend('cpu', { quiet: true });
  policy = await writeTinyPolicy(join(dir, 'policy'));
  const rows = WORDS.map((w, i) => ({ prompt: `\n\nHuman: tell me of ${w.split(' ')[0]}?\n\nAssistant:`, response: ` ${w}${'.'.repeat(i)}`, helpfulness: i / 7, honesty: i % 2 ? null : 1 - i / 7 }));
  writeFileSync(ratings, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(pairs, rows.map((r, i) => JSON.stringify({ prompt: r.prompt, chosen: r.response, rejected: ` ${WORDS[(i + 3) % WORDS.length]}` })).join('\n') + '\n');
  server = await startServe(['--model', policy]);
});
test.after.always(async () => {
  await server?.kill();
});

const close = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]!) <= 1e-5);

test.serial('qrm features --engine openai equals the in-process features within 1e-5 and records the engine', async (t) => {
  for (const [flag, file] of [['--ratings', ratings], ['--pairs', pairs]] as const) {
    const local = join(dir, `local${flag}.safetensors`);
    const viaEngine = join(dir, `engine${flag}.safetensors`);
    let r = await qrlhf(['qrm', 'features', '--model', policy, flag, file, '--out', local, '--backend', 'cpu', '--batch-size', '3']);
    t.is(r.code, 0, r.stderr);
    r = await qrlhf(['qrm', 'features', '--model', policy, flag, file, '--out', viaEngine, '--engine.kind', 'openai', '--engine.base-url', server!.url, '--batch-size', '3']);
    t.is(r.code, 0, r.stderr);
    if (flag === '--ratings') {
      const [a, b] = [readRatingFeatures(local), readRatingFeatures(viaEngine)];
      t.true(close(a.embeddings, b.embeddings));
      t.deepEqual(Array.from(a.labels).map(String), Array.from(b.labels).map(String));
      t.deepEqual(b.attributes, ['helpfulness', 'honesty']);
    } else {
      const [a, b] = [readPairFeatures(local), readPairFeatures(viaEngine)];
      t.true(close(a.embeddings, b.embeddings), 'response features');
      t.true(close(a.prompt_embeddings, b.prompt_embeddings), 'prompt features');
    }
    const meta = readSafetensors(viaEngine).metadata;
    t.is(meta['engine'], 'openai');
    t.is(meta['engine_model'], 'policy');
    t.is(meta['engine_urls'], server!.url);
    t.is(meta['backbone'], policy);
  }
  const r = await qrlhf(['qrm', 'features', '--model', policy, '--ratings', ratings, '--out', join(dir, 'x.safetensors'), '--engine.kind', 'openai', '--engine.base-url', server!.url, '--pooling', 'mean']);
  t.is(r.code, 1);
  t.regex(r.stderr, /pooling "mean" has no engine counterpart/);
});

test.serial('an interrupted engine extraction resumes from its finished shards and ends with the same file', async (t) => {
  const cfg = tinyConfig();
  const tokenizer = await Tokenizer.fromFile(policy, cfg);
  const source = await openAiFeatureSource({ baseUrls: [server!.url], model: 'policy', tokenizer, maxTokens: cfg.maxPositionEmbeddings });
  let calls = 0;
  const failing: FeatureSource = {
    ...source,
    features: (items, opts) => (++calls === 3 ? Promise.reject(new Error('engine went away')) : source.features(items, opts)),
  };
  const out = join(dir, 'resumed.safetensors');
  await t.throwsAsync(extractRatingFeatures({ input: ratings, output: out, source: failing, shardSize: 2 }), { message: 'engine went away' });
  const r = await extractRatingFeatures({ input: ratings, output: out, source, shardSize: 2 });
  t.is(r.resumedShards, 2);
  const { model, tokenizer: tok } = await loadModel(policy);
  const whole = join(dir, 'whole.safetensors');
  await extractRatingFeatures({ input: ratings, output: whole, backbone: { model, tokenizer: tok }, shardSize: 2 });
  model.dispose();
  t.true(close(readRatingFeatures(out).embeddings, readRatingFeatures(whole).embeddings));
});

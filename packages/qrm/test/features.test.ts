import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, QrlhfError } from '@qrlhf/core';
import { charTokenizer, tinyLlama } from './reference.js';
import { encodePair, pairFeatures, extractPairFeatures, extractRatingFeatures, readPairFeatures, readRatingFeatures, type Backbone } from '@qrlhf/qrm';

const config = tinyLlama;

function backbone(): Backbone {
  return { model: LlamaModel.random(config, 4), tokenizer: charTokenizer() };
}

/** The reference: one unpadded forward pass per sequence, hidden states read at given positions. */
function single(b: Backbone, ids: number[], positions: number[]): Float32Array[] {
  const h = tf.tidy(() => b.model.hidden(tf.tensor2d([ids], [1, ids.length], 'int32')));
  const data = h.dataSync() as Float32Array;
  h.dispose();
  const d = config.hiddenSize;
  return positions.map((p) => data.slice(p * d, (p + 1) * d));
}

const prompts = ['\n\nHuman: hi there?\n\nAssistant:', '\n\nHuman: what is a cat?\n\nAssistant:', '\n\nHuman: no.\n\nAssistant:'];
const responses = [' hello.', ' a cat is an animal that says meow, often.', ' ok', ' i do not know.', ''];

function close(t: { true: (c: boolean, m?: string) => void }, a: Float32Array, b: Float32Array, what: string): void {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  t.true(m < 1e-4, `${what}: max difference ${m}`);
}

test.serial('encodePair finds the prompt end and truncates from the front', async (t) => {
  const tok = charTokenizer();
  const e = encodePair(tok, 'ab:', ' cd', 100);
  t.deepEqual(e.ids, tok.encode('ab: cd', { addBos: true }));
  t.is(e.promptEnd, 3); // <s> a b :
  const tr = encodePair(tok, 'abcdef:', ' xy', 5);
  t.is(tr.ids.length, 5);
  t.is(tr.truncated, 6);
  t.is(tr.ids[tr.promptEnd], tok.encode(':')[0]);
  t.throws(() => encodePair(tok, 'a:', ' long answer', 4, 'r.jsonl:3'), { instanceOf: QrlhfError, message: /r\.jsonl:3: the response alone is 12 tokens/ });
});

test.serial('stage 1 and stage 2 features equal per-row single forward passes; stage 1 resumes after an interruption', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-feat-'));
  const b = backbone();
  const d = config.hiddenSize;
  const ratings = responses.map((r, i) => ({ prompt: prompts[i % 3]!, response: r, helpfulness: i === 2 ? null : i * 0.5, verbosity: r.length }));
  const rin = join(dir, 'ratings.jsonl');
  writeFileSync(rin, ratings.map((r) => JSON.stringify(r)).join('\n') + '\n');

  // interrupted run: the progress callback fails once the second shard (rows 3-4) has begun
  const out = join(dir, 'stage1.safetensors');
  await t.throwsAsync(
    extractRatingFeatures({ input: rin, output: out, backbone: b, batchSize: 2, shardSize: 2, onProgress: (done) => { if (done > 2) throw new Error('killed'); } }),
    { message: 'killed' },
  );
  t.false(existsSync(out));
  t.true(existsSync(`${out}.parts/shard-00000.safetensors`));
  // a rerun with other settings refuses to mix runs
  await t.throwsAsync(extractRatingFeatures({ input: rin, output: out, backbone: b, batchSize: 2, shardSize: 3 }), { instanceOf: QrlhfError, message: /different shardSize/ });
  const res = await extractRatingFeatures({ input: rin, output: out, backbone: b, batchSize: 2, shardSize: 2 });
  t.is(res.resumedShards, 1);
  t.false(existsSync(`${out}.parts`));
  const f = readRatingFeatures(out);
  t.deepEqual(f.attributes, ['helpfulness', 'verbosity']);
  t.is(f.n, 5);
  t.is(f.d, d);
  ratings.forEach((r, i) => {
    const e = encodePair(b.tokenizer, r.prompt, r.response, 1000);
    const [resp] = single(b, e.ids, [e.ids.length - 1]);
    close(t, f.embeddings.subarray(i * d, (i + 1) * d), resp!, `row ${i} response feature`);
    t.is(f.labels[i * 2], r.helpfulness ?? NaN);
    t.is(f.labels[i * 2 + 1], r.verbosity);
  });

  // stage 2: [N, 2, d], 0 = chosen, 1 = rejected, prompt feature at the prompt's last token
  const pairs = [0, 1, 2].map((i) => ({ prompt: prompts[i]!, chosen: responses[i]!, rejected: responses[i + 1]! }));
  const pin = join(dir, 'pairs.jsonl');
  writeFileSync(pin, pairs.map((r) => JSON.stringify(r)).join('\n'));
  const out2 = join(dir, 'stage2.safetensors');
  const r2 = await extractPairFeatures({ input: pin, output: out2, backbone: b, batchSize: 4, shardSize: 2 });
  t.is(r2.n, 3);
  const g = readPairFeatures(out2);
  pairs.forEach((p, i) => {
    [p.chosen, p.rejected].forEach((resp, side) => {
      const e = encodePair(b.tokenizer, p.prompt, resp, 1000);
      t.is(e.promptEnd, b.tokenizer.encode(p.prompt, { addBos: true }).length - 1);
      const [rf, pf] = single(b, e.ids, [e.ids.length - 1, e.promptEnd]);
      const off = (2 * i + side) * d;
      close(t, g.embeddings.subarray(off, off + d), rf!, `pair ${i} side ${side} response`);
      close(t, g.prompt_embeddings.subarray(off, off + d), pf!, `pair ${i} side ${side} prompt`);
    });
    // the two sides share the prompt: their prompt features agree
    close(t, g.prompt_embeddings.subarray(2 * i * d, (2 * i + 1) * d), g.prompt_embeddings.subarray((2 * i + 1) * d, (2 * i + 2) * d), 'shared prompt');
  });
  b.model.dispose();
});

test.serial('bad rows are errors naming the file and line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-feat-'));
  const p = join(dir, 'bad.jsonl');
  writeFileSync(p, '{"prompt": "a:", "response": " b", "helpfulness": 1}\n{"prompt": "a:", "response": " b", "helpfulness": "high"}\n');
  const b = backbone();
  await t.throwsAsync(extractRatingFeatures({ input: p, output: join(dir, 'o.safetensors'), backbone: b }), {
    instanceOf: QrlhfError,
    message: /bad\.jsonl:2: attribute "helpfulness" must be a finite number or null/,
  });
  b.model.dispose();
});

test.serial("pooling 'mean' averages the response tokens' hidden states of a single pass (the last token for an empty response)", async (t) => {
  const b = backbone();
  const d = config.hiddenSize;
  const items = responses.map((r, i) => ({ prompt: prompts[i % 3]!, response: r }));
  const f = await pairFeatures(b, items, { batchSize: 2, pooling: 'mean' });
  const last = await pairFeatures(b, items, { batchSize: 3 });
  items.forEach((it, i) => {
    const e = encodePair(b.tokenizer, it.prompt, it.response, 1000);
    const from = Math.min(e.promptEnd + 1, e.ids.length - 1);
    const positions = Array.from({ length: e.ids.length - from }, (_, k) => from + k);
    const hs = single(b, e.ids, [...positions, e.promptEnd]);
    const mean = new Float32Array(d);
    for (const h of hs.slice(0, -1)) for (let j = 0; j < d; j++) mean[j] += h[j]! / positions.length;
    close(t, f.response.subarray(i * d, (i + 1) * d), mean, `row ${i} mean response feature`);
    close(t, f.prompt.subarray(i * d, (i + 1) * d), hs.at(-1)!, `row ${i} prompt feature`);
    close(t, f.prompt.subarray(i * d, (i + 1) * d), last.prompt.subarray(i * d, (i + 1) * d), `row ${i} prompt feature, both poolings`);
  });
  await t.throwsAsync(() => pairFeatures(b, items, { pooling: 'sum' as 'mean' }), { instanceOf: QrlhfError, message: /pooling/ });
});

test.serial("pooling 'max' takes each dimension's largest hidden state over the response tokens of a single pass (padding and prompt ignored)", async (t) => {
  const b = backbone();
  const d = config.hiddenSize;
  const items = responses.map((r, i) => ({ prompt: prompts[i % 3]!, response: r }));
  const f = await pairFeatures(b, items, { batchSize: 2, pooling: 'max' });
  items.forEach((it, i) => {
    const e = encodePair(b.tokenizer, it.prompt, it.response, 1000);
    const from = Math.min(e.promptEnd + 1, e.ids.length - 1);
    const positions = Array.from({ length: e.ids.length - from }, (_, k) => from + k);
    const hs = single(b, e.ids, [...positions, e.promptEnd]);
    const max = new Float32Array(d).fill(-Infinity);
    for (const h of hs.slice(0, -1)) for (let j = 0; j < d; j++) max[j] = Math.max(max[j]!, h[j]!);
    close(t, f.response.subarray(i * d, (i + 1) * d), max, `row ${i} max response feature`);
    close(t, f.prompt.subarray(i * d, (i + 1) * d), hs.at(-1)!, `row ${i} prompt feature`);
  });
  // the response written twice: its first copy's hidden states are unchanged (causal), so the max over more tokens is no smaller
  const two = await pairFeatures(b, [items[1]!, { prompt: items[1]!.prompt, response: items[1]!.response + items[1]!.response }], { pooling: 'max' });
  for (let j = 0; j < d; j++) t.true(two.response[d + j]! >= two.response[j]! - 1e-4, `max is monotone in the tokens pooled (dim ${j})`);
});

/**
 * `qrlhf serve` as a real child process: completions and embeddings equal the in-process
 * computation (same sampling seeds, same adapter), run-time adapters load and swap in place,
 * bad requests get a 4xx naming the field and the server keeps answering.
 */
import test from 'ava';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { Rng, generate, initBackend, loadModel, saveLoraAdapter, type LlamaModel } from '@qrlhf/core';
import { rowRng } from '@qrlhf/rloo';
import { tmp, writeTinyPolicy } from '../packages/rloo/test/fixture.js';
import { call, startServe, type ServeProcess } from './engine-helpers.js';

const dir = tmp('serve');
let server: ServeProcess | null = null;
let policy = '';
let model: LlamaModel;

/** A PEFT adapter with random (non-zero) A and B, so it changes what the model samples. */
async function writeAdapter(m: LlamaModel, out: string, seed: number): Promise<void> {
  const rng = new Rng(`adapter:${seed}`);
  const a = m.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj', 'o_proj'] }, rng);
  for (const v of Object.values(a.variables)) v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => rng.normal() * 0.8), v.shape));
  await saveLoraAdapter(out, a, policy);
  m.lora = null;
  a.dispose();
}

test.before(async () => {
  await initBackend('cpu', { quiet: true });
  policy = await writeTinyPolicy(join(dir, 'policy'));
  model = (await loadModel(policy)).model;
  await writeAdapter(model, join(dir, 'adapter-1'), 1);
  await writeAdapter(model, join(dir, 'adapter-2'), 2);
  server = await startServe(['--model', policy]);
});
test.after.always(async () => {
  await server?.kill();
});

/** What the local engine samples for prompt `ids`, n rows seeded `seed`, with the adapter in `adapterDir` (or none). */
async function local(ids: number[], n: number, seed: number, adapterDir: string | null): Promise<number[][]> {
  const { loadLoraAdapter } = await import('@qrlhf/core');
  if (adapterDir) loadLoraAdapter(adapterDir, model);
  const rngs = Array.from({ length: n }, (_, j) => rowRng(seed, j));
  const g = await generate(model, Array.from({ length: n }, () => ids), { maxNewTokens: 8, temperature: 1, eosTokenId: 2, rng: rngs[0]!, rowRngs: rngs });
  model.lora?.dispose();
  model.lora = null;
  return g.tokens;
}

test.serial('completions: the token ids equal in-process sampling with the same seed, for the base model and for adapters swapped in place', async (t) => {
  const url = server!.url;
  const models = (await call(`${url}/models`)).json as { data: { id: string }[] };
  t.deepEqual(models.data.map((m) => m.id), ['policy']);
  const ids = [1, 5, 6, 4, 10, 11];
  const ask = async (model: string) => {
    const r = await call(`${url}/completions`, { model, prompt: ids, n: 3, max_tokens: 8, temperature: 1, seed: 41, stop_token_ids: [2] });
    t.is(r.status, 200, r.text);
    const choices = (r.json as { choices: { token_ids: number[]; finish_reason: string; index: number }[] }).choices;
    t.deepEqual(choices.map((c) => c.index), [0, 1, 2]);
    for (const c of choices) t.is(c.finish_reason, c.token_ids[c.token_ids.length - 1] === 2 ? 'stop' : 'length');
    return choices.map((c) => c.token_ids);
  };
  const base = await ask('policy');
  t.deepEqual(base, await local(ids, 3, 41, null));
  // three requests at once are batched into one generate call; each still gets its own rows
  const many = await Promise.all([1, 2, 3].map((s) => call(`${url}/completions`, { prompt: ids, n: 2, max_tokens: 8, seed: s })));
  for (const [i, r] of many.entries()) {
    t.deepEqual((r.json as { choices: { token_ids: number[] }[] }).choices.map((c) => c.token_ids), await local(ids, 2, i + 1, null));
  }

  let r = await call(`${url}/load_lora_adapter`, { lora_name: 'pol', lora_path: join(dir, 'adapter-1') });
  t.is(r.status, 200, r.text);
  const withA1 = await ask('pol');
  t.deepEqual(withA1, await local(ids, 3, 41, join(dir, 'adapter-1')));
  t.notDeepEqual(withA1, base);
  // a second load under the same name without load_inplace is refused, with it the adapter is replaced
  r = await call(`${url}/load_lora_adapter`, { lora_name: 'pol', lora_path: join(dir, 'adapter-2') });
  t.is(r.status, 400);
  t.is((r.json as { error: { param: string } }).error.param, 'lora_name');
  r = await call(`${url}/load_lora_adapter`, { lora_name: 'pol', lora_path: join(dir, 'adapter-2'), load_inplace: true });
  t.is(r.status, 200, r.text);
  const withA2 = await ask('pol');
  t.deepEqual(withA2, await local(ids, 3, 41, join(dir, 'adapter-2')));
  t.notDeepEqual(withA2, withA1);
  t.deepEqual(await ask('policy'), base, 'the base model is untouched by the adapters');
  r = await call(`${url}/unload_lora_adapter`, { lora_name: 'pol' });
  t.is(r.status, 200);
  r = await call(`${url}/completions`, { model: 'pol', prompt: ids });
  t.is(r.status, 404);
});

test.serial('embeddings: the final-norm hidden state at the last token, equal to the in-process one within 1e-5', async (t) => {
  const inputs = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13, 14], [1, 5]];
  const r = await call(`${server!.url}/embeddings`, { model: 'policy', input: inputs });
  t.is(r.status, 200, r.text);
  const data = (r.json as { data: { index: number; embedding: number[] }[] }).data;
  const d = model.config.hiddenSize;
  for (const [i, ids] of inputs.entries()) {
    const h = tf.tidy(() => model.hidden(tf.tensor2d([ids], [1, ids.length], 'int32')).slice([0, ids.length - 1, 0], [1, 1, d]).reshape([d]));
    const want = h.dataSync();
    h.dispose();
    const got = data[i]!.embedding;
    t.is(got.length, d);
    t.true(got.every((x, j) => Math.abs(x - want[j]!) <= 1e-5), `row ${i}`);
  }
});

test.serial('bad requests get a 4xx JSON error naming the field, and the server keeps answering', async (t) => {
  const url = server!.url;
  const cases: [string, unknown, number, string][] = [
    ['/completions', {}, 400, 'prompt'],
    ['/completions', { prompt: [1, 5], n: 0 }, 400, 'n'],
    ['/completions', { prompt: [1, 999] }, 400, 'prompt[0]'],
    ['/completions', { prompt: [1, 5], temperature: 'hot' }, 400, 'temperature'],
    ['/completions', { prompt: [1, 5], model: 'nope' }, 404, 'model'],
    ['/completions', { prompt: [1, 5], max_tokens: 1000 }, 400, 'max_tokens'],
    ['/completions', '{not json', 400, 'body'],
    ['/completions', [1, 2], 400, 'body'],
    ['/embeddings', { input: [] }, 400, 'input'],
    ['/load_lora_adapter', { lora_name: 'x', lora_path: join(dir, 'missing') }, 400, 'lora_path'],
    ['/load_lora_adapter', { lora_path: join(dir, 'adapter-1') }, 400, 'lora_name'],
    ['/unload_lora_adapter', { lora_name: 'never' }, 404, 'lora_name'],
    ['/reward', { prompts: ['a'], responses: ['b'] }, 404, 'url'],
  ];
  for (const [path, body, status, param] of cases) {
    const r = await call(url + path, body);
    t.is(r.status, status, `${path} ${JSON.stringify(body)}: ${r.text}`);
    const e = (r.json as { error?: { param?: string; message?: string } }).error;
    t.is(e?.param, param, `${path} ${JSON.stringify(body)}`);
    t.true(typeof e?.message === 'string' && e.message.length > 0);
  }
  t.is((await call(`${url}/models`)).status, 200);
  t.is(server!.proc.exitCode, null);
});

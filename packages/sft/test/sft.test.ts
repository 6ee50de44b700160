/**
 * One tiny SFT run (random 2-layer Llama, char tokenizer, a dozen dialogues) shared by the tests
 * below: run-folder layout, metrics, PEFT adapter files, merged = unmerged, flat tensor count.
 */
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { loadLoraAdapter, loadModel, type Metrics } from '@qrlhf/core';
import { runSft, readMetrics, type SftResult } from '../src/index.js';
import type { SftConfig } from '../src/config.js';
import { TINY, hhRows, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

let cfg: SftConfig;
let result: SftResult;
const tensorsAfterStep: number[] = [];
const hooked: Metrics[] = [];

test.before(async () => {
  const d = tmp('run');
  const model = await writeTinyModel(join(d, 'model'));
  const data = writeJsonl(join(d, 'data.jsonl'), hhRows(12));
  cfg = tinyConfig({ model, data, out: join(d, 'run'), maxSteps: 6, evalEvery: 3, checkpointEvery: 2, loraDropout: 0.1 });
  result = await runSft(cfg, {
    quiet: true,
    onStep: () => tensorsAfterStep.push(tf.memory().numTensors),
    onMetrics: (m) => hooked.push(m),
  });
});

/** An independent safetensors header reader: 8-byte little-endian length, then JSON. */
function safetensorsHeader(path: string): Record<string, { dtype: string; shape: number[]; data_offsets: number[] }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, never>;
  delete h['__metadata__'];
  return h;
}

test('the run folder holds the resolved config, metrics, checkpoint, adapter, merged model and samples', (t) => {
  const out = cfg.out;
  t.deepEqual(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')), cfg);
  for (const f of ['metrics.jsonl', 'checkpoints/state.json', 'adapter/adapter_config.json', 'adapter/adapter_model.safetensors',
    'merged/config.json', 'merged/model.safetensors', 'merged/tokenizer.json', 'samples.jsonl']) {
    t.true(existsSync(join(out, f)), f);
  }
  t.is(result.steps, 6);
  t.is(result.data.train + result.data.heldOut, 12);
  t.is(result.data.heldOut, 3);
  const s = readFileSync(join(out, 'samples.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.is(s.length, 1);
  t.is(typeof s[0]!['response'], 'string');
  t.true(String(s[0]!['prompt']).endsWith('\n\nAssistant:'));
});

test('metrics.jsonl: eval at step 0 before any update, training rows with step and train/loss, train/lr, eval/… rows every N steps', (t) => {
  const rows = readMetrics(cfg.out);
  t.deepEqual(rows, hooked);
  // the file holds the namespaced names itself (readMetrics would upgrade old flat ones)
  const raw = readFileSync(join(cfg.out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(raw, rows);
  // warmup 2 then cosine to 0 at step 6: the update with 0-based index s has lr(s)
  const lr = (s: number) => (s < 2 ? (cfg.lr * (s + 1)) / 2 : cfg.lr * 0.5 * (1 + Math.cos((Math.PI * (s - 2)) / 4)));
  t.is(rows[0]!['step'], 0);
  t.is(rows[0]!['split'], 'eval');
  t.is(rows[0]!['eval/loss'], result.evalLossBefore);
  // an evaluation row carries only eval/ metrics: never a train/loss (the held-out loss is not a training loss)
  const evals = rows.filter((r) => r['split'] === 'eval');
  for (const r of evals) t.deepEqual(Object.keys(r).sort(), ['eval/loss', 'eval/token_accuracy', 'eval/tokens', 'split', 'step']);
  const train = rows.filter((r) => r['split'] !== 'eval');
  t.deepEqual(train.map((r) => r['step']), [1, 2, 3, 4, 5, 6]);
  for (const r of train) {
    t.deepEqual(Object.keys(r).sort(), ['step', 'time/tokens_per_s', 'train/epoch', 'train/grad_norm', 'train/loss', 'train/lr']);
    for (const k of Object.keys(r)) t.true(Number.isFinite(r[k] as number), `${k} at step ${r['step']}`);
  }
  train.forEach((r) => t.true(Math.abs((r['train/lr'] as number) - lr((r['step'] as number) - 1)) < 1e-12));
  t.deepEqual(evals.map((r) => r['step']), [0, 3, 6]);
  for (const r of evals) t.true((r['eval/token_accuracy'] as number) >= 0 && (r['eval/token_accuracy'] as number) <= 1);
  t.is(evals.at(-1)!['eval/loss'], result.evalLossAfter);
});

test('the adapter files carry PEFT names, shapes and config keys', (t) => {
  const conf = JSON.parse(readFileSync(join(result.adapterDir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  t.is(conf['peft_type'], 'LORA');
  t.is(conf['task_type'], 'CAUSAL_LM');
  t.is(conf['r'], cfg.loraR);
  t.is(conf['lora_alpha'], cfg.loraAlpha);
  t.is(conf['lora_dropout'], cfg.loraDropout);
  t.is(conf['bias'], 'none');
  t.is(conf['base_model_name_or_path'], cfg.model);
  t.deepEqual([...(conf['target_modules'] as string[])].sort(), ['k_proj', 'o_proj', 'q_proj', 'v_proj']);
  const header = safetensorsHeader(join(result.adapterDir, 'adapter_model.safetensors'));
  const hd = TINY.hiddenSize / TINY.numHeads;
  const outDim: Record<string, number> = { q_proj: TINY.numHeads * hd, k_proj: TINY.numKvHeads * hd, v_proj: TINY.numKvHeads * hd, o_proj: TINY.hiddenSize };
  const inDim: Record<string, number> = { q_proj: TINY.hiddenSize, k_proj: TINY.hiddenSize, v_proj: TINY.hiddenSize, o_proj: TINY.numHeads * hd };
  const expected: Record<string, number[]> = {};
  for (let i = 0; i < TINY.numLayers; i++) {
    for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) {
      expected[`base_model.model.model.layers.${i}.self_attn.${m}.lora_A.weight`] = [cfg.loraR, inDim[m]!];
      expected[`base_model.model.model.layers.${i}.self_attn.${m}.lora_B.weight`] = [outDim[m]!, cfg.loraR];
    }
  }
  t.deepEqual(Object.keys(header).sort(), Object.keys(expected).sort());
  for (const [k, shape] of Object.entries(expected)) {
    t.deepEqual(header[k]!.shape, shape, k);
    t.is(header[k]!.dtype, 'F32', k);
  }
});

test('merged and unmerged models give the same logits (1e-4 relative), and differ from the base', async (t) => {
  const merged = await loadModel(result.mergedDir);
  const base = await loadModel(cfg.model!);
  const withAdapter = await loadModel(cfg.model!);
  loadLoraAdapter(result.adapterDir, withAdapter.model);
  const text = '\n\nHuman: tell me about owls\n\nAssistant: owls are nice.';
  const ids = tf.tensor2d([merged.tokenizer.encode(text, { addBos: true })], undefined, 'int32');
  const [lm, lu, lb] = [merged, withAdapter, base].map((m) => m.model.forward(ids).dataSync() as Float32Array);
  let maxDiff = 0;
  let maxAbs = 0;
  let maxBase = 0;
  for (let i = 0; i < lm!.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(lm![i]! - lu![i]!));
    maxAbs = Math.max(maxAbs, Math.abs(lu![i]!));
    maxBase = Math.max(maxBase, Math.abs(lm![i]! - lb![i]!));
  }
  t.true(maxDiff <= 1e-4 * maxAbs, `merged vs unmerged: max diff ${maxDiff}, max |logit| ${maxAbs}`);
  t.true(maxBase > 1e-3 * maxAbs, `training moved the logits: max diff from base ${maxBase}`);
  ids.dispose();
  for (const m of [merged, base, withAdapter]) m.model.dispose();
});

test('tf.memory().numTensors stays flat across training steps', (t) => {
  t.is(tensorsAfterStep.length, 6);
  t.true(tensorsAfterStep.every((n) => n === tensorsAfterStep[0]), tensorsAfterStep.join(' '));
});

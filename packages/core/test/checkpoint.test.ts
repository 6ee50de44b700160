import test from 'ava';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../src/errors.js';
import { loadModel, saveHfFolder } from '../src/io/checkpoint.js';
import { openSafetensors, readSafetensors, writeSafetensors, type RawTensor } from '../src/io/safetensors.js';
import { checkMemory, estimateMemory, parameterCount } from '../src/model/memory.js';
import { configFromHf, type LlamaConfig } from '../src/model/config.js';
import { LlamaModel } from '../src/model/llama.js';
import { generate } from '../src/model/sampling.js';
import { sharedDataFile } from '../src/paths.js';
import { Rng } from '../src/random.js';
import { Tokenizer } from '../src/tokenizer.js';

const root = mkdtempSync(join(tmpdir(), 'qrlhf-ckpt-'));
let n = 0;
const fresh = (name: string) => join(root, `${name}-${n++}`);

const cfg = (over: Partial<LlamaConfig> = {}): LlamaConfig => ({
  vocabSize: 12, hiddenSize: 8, intermediateSize: 10, numLayers: 2, numHeads: 2, numKvHeads: 1,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false, maxPositionEmbeddings: 32,
  bosTokenId: 1, eosTokenId: 2, ...over,
});

/** A tiny word-level tokenizer.json written by hand: <unk> <s> </s> and nine letters. */
function toyTokenizer(): Tokenizer {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  'abcdefghi'.split('').forEach((c, i) => (vocab[c] = 3 + i));
  return Tokenizer.fromJSON({
    version: '1.0',
    added_tokens: [
      { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 2, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: null,
    model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>', byte_fallback: false, fuse_unk: false },
    decoder: { type: 'Fuse' },
  });
}

function weightsOf(m: LlamaModel): Record<string, number[]> {
  return Object.fromEntries(Object.entries(m.weights).map(([k, v]) => [k, Array.from(v.dataSync())]));
}

function logitsOf(m: LlamaModel, ids: number[]): Float32Array {
  return tf.tidy(() => m.forward(tf.tensor2d([ids], [1, ids.length], 'int32')).dataSync() as Float32Array);
}

test('saveHfFolder then loadModel gives back the same weights, config and logits (untied and tied)', async (t) => {
  for (const tie of [false, true]) {
    const model = LlamaModel.random(cfg({ tieWordEmbeddings: tie }), 7);
    const tok = toyTokenizer();
    const dir = fresh('hf');
    await saveHfFolder(dir, model, tok);
    t.deepEqual(readdirSync(dir).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    const hfConfig = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    t.like(hfConfig, { hidden_size: 8, num_key_value_heads: 1, tie_word_embeddings: tie, model_type: 'llama' });
    const names = Object.keys(readSafetensors(join(dir, 'model.safetensors')).tensors);
    t.is(names.includes('lm_head.weight'), !tie);
    const loaded = await loadModel(dir);
    t.deepEqual(loaded.model.config, model.config);
    t.deepEqual(weightsOf(loaded.model), weightsOf(model));
    t.deepEqual(Array.from(logitsOf(loaded.model, [1, 3, 4, 5])), Array.from(logitsOf(model, [1, 3, 4, 5])));
    t.deepEqual(loaded.tokenizer.encode('abc'), [3, 4, 5]);
    t.is(loaded.tokenizer.bosId, 1);
    t.is(loaded.source, dir);
    // no temporary folders left beside it
    t.deepEqual(readdirSync(root).filter((f) => f.includes('.tmp-') || f.includes('.old-')), []);
    model.dispose();
    loaded.model.dispose();
  }
});

test('saveHfFolder: F16 weights load back as the F16-rounded values; replacing a model folder works, other folders are refused', async (t) => {
  const model = LlamaModel.random(cfg(), 3);
  const dir = fresh('half');
  await saveHfFolder(dir, model, toyTokenizer(), { dtype: 'F16' });
  const st = readSafetensors(join(dir, 'model.safetensors'));
  t.is(st.tensors['model.norm.weight']!.dtype, 'F16');
  t.is(st.metadata['format'], 'pt');
  const loaded = await loadModel(dir);
  const w = model.weights['model.layers.0.self_attn.q_proj.weight']!.dataSync();
  const back = loaded.model.weights['model.layers.0.self_attn.q_proj.weight']!.dataSync();
  let maxRel = 0;
  // normal binary16 range only (below 2^-14 the spacing is absolute, not relative)
  for (let i = 0; i < w.length; i++) if (Math.abs(w[i]!) >= 2 ** -14) maxRel = Math.max(maxRel, Math.abs(back[i]! - w[i]!) / Math.abs(w[i]!));
  t.true(maxRel > 0 && maxRel <= 2 ** -11, `F16 relative rounding error ${maxRel}`);
  // overwrite the same folder (it is a model folder)
  await saveHfFolder(dir, model, toyTokenizer());
  t.is(readSafetensors(join(dir, 'model.safetensors')).tensors['model.norm.weight']!.dtype, 'F32');
  const other = fresh('precious');
  mkdirSync(other);
  writeFileSync(join(other, 'notes.txt'), 'keep me');
  await t.throwsAsync(() => saveHfFolder(other, model, toyTokenizer()), { instanceOf: QrlhfError, message: /not a model folder .* refusing/ });
  t.true(existsSync(join(other, 'notes.txt')));
  model.dispose();
  loaded.model.dispose();
});

/** Writes an HF folder by hand from raw tensors, optionally in shards. */
function handFolder(config: LlamaConfig, tensors: Record<string, RawTensor>, shards = 1): string {
  const dir = fresh('hand');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    model_type: 'llama', vocab_size: config.vocabSize, hidden_size: config.hiddenSize, intermediate_size: config.intermediateSize,
    num_hidden_layers: config.numLayers, num_attention_heads: config.numHeads, num_key_value_heads: config.numKvHeads,
    rms_norm_eps: config.rmsNormEps, tie_word_embeddings: config.tieWordEmbeddings, max_position_embeddings: 32,
  }));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(toyTokenizer().toJSON()));
  const names = Object.keys(tensors);
  if (shards === 1) {
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
  } else {
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < shards; s++) {
      const file = `model-0000${s + 1}-of-0000${shards}.safetensors`;
      const part = Object.fromEntries(names.filter((_, i) => i % shards === s).map((k) => [k, tensors[k]!]));
      for (const k of Object.keys(part)) weightMap[k] = file;
      writeSafetensors(join(dir, file), part);
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  }
  return dir;
}

function rawWeights(m: LlamaModel): Record<string, RawTensor> {
  return Object.fromEntries(Object.entries(m.weights).map(([k, v]) => [k, { dtype: 'F32', shape: [...v.shape], data: v.dataSync() as Float32Array }]));
}

test('loadModel: sharded folders (model.safetensors.index.json) load like single files; BF16 is accepted', async (t) => {
  const model = LlamaModel.random(cfg(), 11);
  const raw = rawWeights(model);
  const sharded = await loadModel(handFolder(model.config, raw, 3));
  t.deepEqual(weightsOf(sharded.model), weightsOf(model));
  const bf: Record<string, RawTensor> = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, { ...v, dtype: 'BF16' }]));
  const bfDir = handFolder(model.config, bf);
  const bfModel = await loadModel(bfDir);
  const a = model.weights['model.embed_tokens.weight']!.dataSync();
  const b = bfModel.model.weights['model.embed_tokens.weight']!.dataSync();
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i]! - b[i]!) > Math.abs(a[i]!) * 2 ** -8) t.fail(`BF16 value ${i}`);
  // a tied checkpoint that also stores lm_head (as some exporters do) loads, the copy ignored
  const tiedModel = LlamaModel.random(cfg({ tieWordEmbeddings: true }), 5);
  const tiedRaw = rawWeights(tiedModel);
  tiedRaw['lm_head.weight'] = { ...tiedRaw['model.embed_tokens.weight']! };
  const tied = await loadModel(handFolder(tiedModel.config, tiedRaw));
  t.false('lm_head.weight' in tied.model.weights);
  for (const m of [model, sharded.model, bfModel.model, tiedModel, tied.model]) m.dispose();
});

test('loadModel: every wrong folder names the file and the fault', async (t) => {
  const model = LlamaModel.random(cfg(), 2);
  const raw = rawWeights(model);
  const fails = async (dir: string, re: RegExp) => {
    const e = await t.throwsAsync(() => loadModel(dir), { instanceOf: QrlhfError });
    t.regex(e!.message, re);
  };
  const missing = { ...raw };
  delete missing['model.layers.1.mlp.up_proj.weight'];
  await fails(handFolder(model.config, missing), /missing tensor "model\.layers\.1\.mlp\.up_proj\.weight" \(expected shape \[10, 8\]/);
  const wrong = { ...raw, 'model.layers.0.self_attn.k_proj.weight': { dtype: 'F32', shape: [8, 8], data: new Float32Array(64) } as RawTensor };
  await fails(handFolder(model.config, wrong), /model\.safetensors: tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[8, 8\], expected \[4, 8\]/);
  const extra = { ...raw, 'model.layers.2.mlp.up_proj.weight': raw['model.layers.1.mlp.up_proj.weight']! };
  await fails(handFolder(model.config, extra), /unexpected tensor "model\.layers\.2\.mlp\.up_proj\.weight"/);
  const ints = { ...raw, 'model.norm.weight': { dtype: 'I32', shape: [8], data: new Int32Array(8) } as RawTensor };
  await fails(handFolder(model.config, ints), /"model\.norm\.weight" has dtype I32, expected a floating type/);
  const noShard = handFolder(model.config, raw, 2);
  rmSync(join(noShard, 'model-00002-of-00002.safetensors'));
  await fails(noShard, /shard "model-00002-of-00002\.safetensors" .* does not exist/);
  const lying = handFolder(model.config, raw, 2);
  const idxPath = join(lying, 'model.safetensors.index.json');
  const idx = JSON.parse(readFileSync(idxPath, 'utf8')) as { weight_map: Record<string, string> };
  idx.weight_map['model.norm.weight'] = idx.weight_map['model.norm.weight']!.includes('00001') ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
  writeFileSync(idxPath, JSON.stringify(idx));
  await fails(lying, /tensor "model\.norm\.weight" is missing, though model\.safetensors\.index\.json places it in this shard/);
  const noWeights = handFolder(model.config, raw);
  rmSync(join(noWeights, 'model.safetensors'));
  await fails(noWeights, /no model\.safetensors or model\.safetensors\.index\.json/);
  const badCfg = handFolder(model.config, raw);
  writeFileSync(join(badCfg, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 8 }));
  await fails(badCfg, /config\.json: "num_attention_heads" is missing/);
  const noTok = handFolder(model.config, raw);
  rmSync(join(noTok, 'tokenizer.json'));
  await fails(noTok, /no tokenizer\.json; give a tokenizer/);
  const empty = fresh('empty');
  mkdirSync(empty);
  await fails(empty, /no config\.json/);
  await fails(join(root, 'absent'), /model not found/);
  model.dispose();
});

const stories = sharedDataFile('models/stories260K/stories260K.bin');
const maybeStories = stories ? test : test.skip;
const KNOWN = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';

maybeStories('stories260K: greedy from BOS writes the known text; the converted HF folder writes the same', async (t) => {
  const bin = await loadModel(stories!);
  t.is(bin.tokenizer.vocabSize, 512);
  const run = async (m: LlamaModel) => (await generate(m, [[1]], { maxNewTokens: 40, temperature: 0, rng: new Rng(0) })).tokens[0]!;
  const ids = await run(bin.model);
  const text = bin.tokenizer.decode(ids, { skipSpecial: true });
  t.true(text.startsWith(KNOWN), text);
  const dir = fresh('stories-hf');
  await saveHfFolder(dir, bin.model, bin.tokenizer);
  const hf = await loadModel(dir);
  t.deepEqual(await run(hf.model), ids);
  t.is(hf.tokenizer.decode(ids, { skipSpecial: true }), text);
  t.deepEqual(hf.tokenizer.encode(KNOWN), bin.tokenizer.encode(KNOWN));
  bin.model.dispose();
  hf.model.dispose();
});

maybeStories('loadModel(.bin): the tokenizer beside it is found, or must be given', async (t) => {
  const lone = fresh('lone');
  mkdirSync(lone);
  const copy = join(lone, 'model.bin');
  writeFileSync(copy, readFileSync(stories!));
  await t.throwsAsync(() => loadModel(copy), { instanceOf: QrlhfError, message: /no tokenizer beside it \(looked for tok512\.bin, tokenizer\.bin/ });
  const tok = sharedDataFile('models/stories260K/tok512.bin')!;
  const given = await loadModel(copy, { tokenizer: tok });
  t.is(given.tokenizer.vocabSize, 512);
  given.model.dispose();
  const big = sharedDataFile('tokenizers/llama2/tokenizer.bin');
  if (big) await t.throwsAsync(() => loadModel(copy, { tokenizer: big }), { instanceOf: QrlhfError, message: /32000 tokens but the model .* only 512/ });
});

/** bfloat16 and binary16 rounding of a float32 value, written here from the formats (round to nearest even). */
function bf16Round(x: number): number {
  const u = new Uint32Array(Float32Array.of(x).buffer)[0]!;
  const r = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return new Float32Array(Uint32Array.of(r >>> 0).buffer)[0]!;
}
function f16Round(x: number): number {
  // the binary16 grid around x: 10 fraction bits, normals from 2^-14 (the test's values are normal)
  const e = Math.floor(Math.log2(Math.abs(x)));
  const step = 2 ** (Math.max(e, -14) - 10);
  const q = x / step;
  const f = Math.floor(q);
  const r = q - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(q);
  return r * step;
}

test('loadModel reads sharded BF16 and F16 checkpoints one tensor at a time into the exact float32 values, with a progress bar', async (t) => {
  const model = LlamaModel.random(cfg(), 21);
  const raw = rawWeights(model);
  const names = Object.keys(raw);
  // shard 1 in BF16, shard 2 in F16, shard 3 in F32
  const dir = handFolder(model.config, raw, 3);
  const dtypes = ['BF16', 'F16', 'F32'] as const;
  for (let s = 0; s < 3; s++) {
    const file = join(dir, `model-0000${s + 1}-of-00003.safetensors`);
    const part = Object.fromEntries(names.filter((_, i) => i % 3 === s).map((k) => [k, raw[k]!]));
    writeSafetensors(file, part, undefined, { dtype: dtypes[s] === 'F32' ? 'F32' : dtypes[s] });
  }
  const lines: string[] = [];
  const stream = Object.assign(new (await import('node:stream')).Writable({ write(c, _e, cb) { lines.push(String(c)); cb(); } }), { isTTY: false });
  const loaded = await loadModel(dir, { progress: stream });
  let checked = 0;
  names.forEach((k, i) => {
    const want = Array.from(raw[k]!.data as Float32Array, (x) => (i % 3 === 0 ? bf16Round(x) : i % 3 === 1 ? f16Round(x) : x));
    const got = Array.from(loaded.model.weights[k]!.dataSync());
    t.deepEqual(got, want, `${k} (${dtypes[i % 3]})`);
    checked++;
  });
  t.is(checked, names.length);
  t.regex(lines.join(''), /loading hand-\d+ \(MiB\)/);
  loaded.model.dispose();
  model.dispose();
});

test('openSafetensors reads the header only and one tensor per read(); a file cut short is named', (t) => {
  const dir = fresh('open');
  mkdirSync(dir, { recursive: true });
  const p = join(dir, 'a.safetensors');
  const a = Float32Array.from({ length: 12 }, (_, i) => i / 7);
  writeSafetensors(p, { a: { dtype: 'F32', shape: [3, 4], data: a }, b: { dtype: 'F32', shape: [2], data: Float32Array.of(5, 6) } }, undefined, { dtype: 'BF16' });
  const f = openSafetensors(p);
  t.deepEqual(f.tensors, { a: { dtype: 'BF16', shape: [3, 4] }, b: { dtype: 'BF16', shape: [2] } });
  t.deepEqual(Array.from(f.read('a').data as Float32Array), Array.from(a, bf16Round));
  t.deepEqual(Array.from(f.read('b').data as Float32Array), [5, 6]);
  t.throws(() => f.read('c'), { instanceOf: QrlhfError, message: /a\.safetensors: no tensor "c"/ });
  f.close();
  // The same checks as readSafetensors on the header: a truncated file is refused by name.
  const bytes = readFileSync(p);
  writeFileSync(p, bytes.subarray(0, bytes.length - 3));
  t.throws(() => openSafetensors(p), { instanceOf: QrlhfError, message: /a\.safetensors: not a valid safetensors file: tensor "b": data_offsets/ });
});

test('the memory estimate counts Llama-3.2-1B\'s published 1,235,814,400 parameters; a model that will not fit stops in one line saying how much it needs and what to change', async (t) => {
  const llama = configFromHf({
    vocab_size: 128256, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32,
    num_key_value_heads: 8, head_dim: 64, tie_word_embeddings: true, max_position_embeddings: 131072,
  });
  t.is(parameterCount(llama), 1235814400);
  const plan = { batch: 4, seqLen: 512, training: true, lora: { r: 8, targetModules: 'all-linear' as const } };
  const e = estimateMemory(llama, plan);
  t.is(e.weights, 4 * 1235814400);
  // LoRA r 8 on all seven projections of 16 layers: 8 · Σ (in + out), float32, values + gradients; AdamW 2 moments.
  const perLayer = 8 * ((2048 + 2048) + 2 * (2048 + 512) + (2048 + 2048) + 2 * (2048 + 8192) + (8192 + 2048));
  t.is(e.lora, 2 * 4 * 16 * perLayer);
  t.is(e.optimizer, 2 * 4 * 16 * perLayer);
  t.is(e.total, e.weights + e.lora + e.optimizer + e.activations);
  t.true(e.activations > 0);
  // On the wasm backend (a 4 GiB heap) the weights alone do not fit.
  const wasm = { bytes: 4 * 1024 ** 3, what: 'the wasm backend\'s heap' };
  t.throws(() => checkMemory(llama, plan, 'meta-llama--Llama-3.2-1B', wasm), {
    instanceOf: QrlhfError,
    message: /^meta-llama--Llama-3\.2-1B: the model needs about [\d.]+ GiB \(weights 4\.6 GiB, LoRA [\d.]+ GiB, optimiser [\d.]+ GiB, activations [\d.]+ GiB at batch 4 × 512 tokens\) but only 4\.0 GiB is available \(the wasm backend's heap\); the weights alone do not fit: use a smaller model or a backend without the wasm heap's 4 GiB limit \(tensorflow\)$/,
  });
  // Weights that fit, a batch that does not: the advice is about the batch.
  const big = { bytes: 64 * 1024 ** 3, what: 'this machine\'s memory' };
  t.throws(() => checkMemory(llama, { ...plan, batch: 256, seqLen: 4096 }, 'x', big), { instanceOf: QrlhfError, message: /lower the batch size or the sequence length$/ });
  t.notThrows(() => checkMemory(llama, { batch: 1, seqLen: 512, training: false }, 'x', big));
  // loadModel runs the check before reading any weight.
  const model = LlamaModel.random(cfg(), 3);
  const dir = handFolder(model.config, rawWeights(model));
  model.dispose();
  const err = await t.throwsAsync(loadModel(dir, { memory: { batch: 1e9, seqLen: 32, training: true } }), { instanceOf: QrlhfError });
  t.regex(err!.message, /hand-\d+: the model needs about [\d.]+ GiB .* at batch 1000000000 × 32 tokens\) but only/);
  t.is(err!.message.split('\n').length, 1);
});

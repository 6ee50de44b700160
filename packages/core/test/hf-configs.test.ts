/**
 * The real config.json files of ../shared/data/hf-configs (SmolLM2, Llama 3.2, TinyLlama; see its
 * MANIFEST.md): each loads with its own values, and a model built from it (layers and widths
 * scaled down, everything else as in the file) runs forward, trains a LoRA adapter and decodes,
 * stopping at any of its eos ids. The rotary frequencies of Llama 3.2's llama3 scaling against a
 * float64 reference of the published formula, below and above the original context. Bad inputs
 * name the file and the key.
 */
import test from 'ava';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  AdamW, LlamaModel, QrlhfError, Rng, configFromHf, initBackend, configToHf, eosIds, generate, llamaWeightShapes, loadModel,
  Tokenizer, ropeInverseFrequencies, sequenceLogProbs, sharedDataDir, writeSafetensors, type LlamaConfig,
} from '@qrlhf/core';
import { modelFrom, randomWeights, referenceInvFreq, smallConfig } from './model-reference.js';
import { ropeAngles } from '../src/model/rope.js';

await initBackend('wasm', { quiet: true });
const dir = sharedDataDir() ? join(sharedDataDir()!, 'hf-configs') : null;
const present = dir !== null && existsSync(dir);
const maybe = present ? test : test.skip;
if (!present) console.log('hf-configs tests skipped: ../shared/data/hf-configs is absent');

const folders = present ? readdirSync(dir!).filter((f) => existsSync(join(dir!, f, 'config.json'))).sort() : [];
const read = (f: string): Record<string, unknown> => JSON.parse(readFileSync(join(dir!, f, 'config.json'), 'utf8')) as Record<string, unknown>;

/** What each file says (MANIFEST.md), as LlamaConfig fields. */
const EXPECTED: Record<string, Partial<LlamaConfig> & { headDimOf: number }> = {
  'HuggingFaceTB--SmolLM2-135M-Instruct': { hiddenSize: 576, numLayers: 30, numHeads: 9, numKvHeads: 3, ropeTheta: 100000, tieWordEmbeddings: true, bosTokenId: 1, eosTokenId: 2, padTokenId: 2, vocabSize: 49152, headDimOf: 64 },
  'HuggingFaceTB--SmolLM2-360M-Instruct': { hiddenSize: 960, numLayers: 32, numHeads: 15, numKvHeads: 5, ropeTheta: 100000, tieWordEmbeddings: true, padTokenId: 2, headDimOf: 64 },
  'meta-llama--Llama-3.2-1B-Instruct': { hiddenSize: 2048, numLayers: 16, numHeads: 32, numKvHeads: 8, headDim: 64, ropeTheta: 500000, tieWordEmbeddings: true, bosTokenId: 128000, eosTokenId: 128001, eosTokenIds: [128001, 128008, 128009], vocabSize: 128256, maxPositionEmbeddings: 131072, headDimOf: 64,
    ropeScaling: { ropeType: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } },
  'meta-llama--Llama-3.2-1B': { headDim: 64, eosTokenId: 128001, tieWordEmbeddings: true, headDimOf: 64,
    ropeScaling: { ropeType: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } },
  'TinyLlama--TinyLlama-1.1B-Chat-v1.0': { hiddenSize: 2048, numLayers: 22, numHeads: 32, numKvHeads: 4, ropeTheta: 10000, tieWordEmbeddings: false, bosTokenId: 1, eosTokenId: 2, vocabSize: 32000, maxPositionEmbeddings: 2048, headDimOf: 64 },
};

maybe('every config.json in hf-configs loads with the values its file holds', (t) => {
  t.deepEqual(folders, Object.keys(EXPECTED).sort(), 'the folders with a config.json');
  for (const f of folders) {
    const c = configFromHf(read(f), join(dir!, f, 'config.json'));
    const { headDimOf, ...fields } = EXPECTED[f]!;
    for (const [k, v] of Object.entries(fields)) t.deepEqual(c[k as keyof LlamaConfig], v, `${f}: ${k}`);
    t.is(c.hiddenSize / c.numHeads, headDimOf, `${f}: head width`);
    if (!('pad_token_id' in read(f))) t.is(c.padTokenId, undefined, `${f}: no pad_token_id`);
    if (!Array.isArray(read(f)['eos_token_id'])) t.is(c.eosTokenIds, undefined);
    // configToHf writes back what matters (a saved model keeps its scaling, head_dim and eos list).
    const again = configFromHf(configToHf(c));
    t.deepEqual(again, c, `${f}: configToHf round trip`);
  }
});

/** The file's config with layers and widths scaled down; the ratios, ids, vocab, rope and flags as in the file. */
function scaledDown(json: Record<string, unknown>): Record<string, unknown> {
  const H = json['num_attention_heads'] as number;
  const KV = (json['num_key_value_heads'] as number | undefined) ?? H;
  const ratio = H / KV;
  const heads = ratio >= 4 ? ratio : ratio * 2;
  const hd = 8;
  const out: Record<string, unknown> = {
    ...json, num_hidden_layers: 2, num_attention_heads: heads, num_key_value_heads: heads / ratio, hidden_size: heads * hd, intermediate_size: 40,
  };
  if (json['head_dim'] !== undefined) out['head_dim'] = hd;
  return out;
}

for (const f of Object.keys(EXPECTED)) {
  maybe(`${f} (scaled down): forward, LoRA training and decoding`, async (t) => {
    const c = configFromHf(scaledDown(read(f)), `${f}/config.json (scaled)`);
    const model = LlamaModel.random(c, 1);
    const rng = new Rng(2);
    const V = c.vocabSize;
    const rows = [[0, 0, 5, 900, 17, 31000, 4, 8], [11, 12, 13, 14, 15, 16, 17, 18]];
    const mask = [[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]];
    const [idsT, maskT] = [tf.tensor2d(rows, undefined, 'int32'), tf.tensor2d(mask)];
    const logits = model.forward(idsT, { mask: maskT });
    t.deepEqual(logits.shape, [2, 8, V]);
    t.true(Array.from(logits.dataSync()).every(Number.isFinite));
    logits.dispose();

    // LoRA: a few AdamW steps on this batch lower its loss.
    const a = model.addLora({ r: 4, alpha: 8, dropout: 0, targetModules: 'all-linear' }, rng);
    const opt = new AdamW(a.variables, { lr: 0.02, weightDecay: 0 });
    const targets = tf.tensor2d(mask.map((m) => m.slice(1)));
    const loss = () => tf.neg(tf.div(tf.sum(tf.mul(sequenceLogProbs(model, idsT, maskT, targets), targets)), tf.sum(targets))) as tf.Scalar;
    const losses: number[] = [];
    for (let s = 0; s < 4; s++) {
      const { value, grads } = tf.variableGrads(loss, Object.values(a.variables));
      losses.push(value.dataSync()[0]!);
      const byKey = Object.fromEntries(Object.entries(a.variables).map(([k, v]) => [k, grads[v.name]!]));
      opt.step(byKey);
      tf.dispose([value, ...Object.values(grads)]);
    }
    const after = tf.tidy(() => loss().dataSync()[0]!);
    t.log(`LoRA loss ${losses[0]!.toFixed(4)} -> ${after.toFixed(4)}`);
    t.true(after < losses[0]! - 1e-3, `loss ${losses.join(', ')} then ${after}`);

    // Decoding: greedy, through the adapter, stops at maxNewTokens or an eos.
    const g = await generate(model, [[c.bosTokenId, 5, 6], [c.bosTokenId, 7]], { maxNewTokens: 5, temperature: 0, rng, eosTokenId: [] });
    t.true(g.tokens.every((r) => r.length === 5 && r.every((x) => Number.isInteger(x) && x >= 0 && x < V)));
    tf.dispose([idsT, maskT, targets]);
    model.dispose();
  });
}

test('generation stops at any of the eos ids a config lists (eos_token_id as a list), and the tokenizer\'s is added to them', async (t) => {
  const base = smallConfig({ vocabSize: 40 });
  const w = randomWeights(base, 9);
  // The greedy continuation with no eos at all.
  const free = modelFrom(base, w);
  const prompt = [[1, 5, 6]];
  const seq = (await generate(free, prompt, { maxNewTokens: 8, temperature: 0, rng: new Rng(1), eosTokenId: [] })).tokens[0]!;
  free.dispose();
  // Every position whose token is new so far can end the generation through a list in the config.
  const firsts = seq.map((x, i) => (seq.indexOf(x) === i ? i : -1)).filter((i) => i >= 0);
  t.true(firsts.length >= 3, `greedy tokens ${seq}`);
  for (const k of firsts) {
    const others = [...Array(40).keys()].filter((x) => !seq.includes(x));
    const list = [others[0]!, seq[k]!, others[1]!];
    const c: LlamaConfig = { ...base, eosTokenId: list[0]!, eosTokenIds: list };
    const model = modelFrom(c, w);
    const g = await generate(model, prompt, { maxNewTokens: 8, temperature: 0, rng: new Rng(1) });
    t.deepEqual(g.tokens[0], seq.slice(0, k + 1), `eos list ${list}`);
    t.true(g.finishedWithEos[0]);
    model.dispose();
  }
  const c: LlamaConfig = { ...base, eosTokenId: 3, eosTokenIds: [3, 4] };
  t.deepEqual(eosIds(c), [3, 4]);
  t.deepEqual(eosIds(c, 9), [9, 3, 4]);
  t.deepEqual(eosIds({ ...base, eosTokenId: 2 }, 7), [7], 'a single eos in the config leaves the tokenizer\'s alone, as before');
});

maybe('llama3 rope scaling (Llama 3.2): inverse frequencies and angles equal a float64 reference of the published formula below and above the original context', (t) => {
  const c = configFromHf(read('meta-llama--Llama-3.2-1B-Instruct'), 'config.json');
  const got = ropeInverseFrequencies(c);
  const ref = referenceInvFreq(c);
  t.is(got.length, 32);
  for (let i = 0; i < 32; i++) t.true(Math.abs(got[i]! - ref[i]!) <= 1e-15 * ref[i]!, `inv_freq[${i}] ${got[i]} vs ${ref[i]}`);
  // Anchors of the formula: the highest frequency is kept, the lowest divided by factor 32, and some in between are blended.
  t.is(got[0], 1);
  t.true(Math.abs(got[31]! - Math.pow(500000, -62 / 64) / 32) < 1e-20);
  const blended = ref.filter((f, i) => f !== Math.pow(500000, (-2 * i) / 64) && Math.abs(f - Math.pow(500000, (-2 * i) / 64) / 32) > 1e-18);
  t.true(blended.length > 0, 'some frequencies fall between the two wavelength bounds');
  // The angles the model uses (float32 cos / sin of the float64 angle) at positions below and above 8192.
  const table = ropeAngles(c, 20001);
  let worst = 0;
  for (const p of [0, 1, 100, 8191, 8192, 8193, 12000, 20000]) {
    for (let i = 0; i < 32; i++) {
      const a = p * ref[i]!;
      worst = Math.max(worst, Math.abs(table.cos[p * 32 + i]! - Math.cos(a)), Math.abs(table.sin[p * 32 + i]! - Math.sin(a)));
    }
  }
  t.true(worst < 1e-7, `largest cos/sin difference ${worst}`); // float32 rounding of values in [-1, 1]
  // Without the scaling the low frequencies would differ by the factor.
  const { ropeScaling: _, ...plain } = c;
  t.true(Math.abs(ropeInverseFrequencies(plain)[31]! / got[31]! - 32) < 1e-9);
});

maybe('a checkpoint whose tensor shapes disagree with config.json is refused, naming the file and the tensor; so is an unknown rope type', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-hfcfg-'));
  try {
    const json = scaledDown(read('HuggingFaceTB--SmolLM2-135M-Instruct'));
    const c = configFromHf(json);
    const folder = join(tmp, 'm');
    mkdirSync(folder);
    writeFileSync(join(folder, 'config.json'), JSON.stringify(json));
    const tensors: Record<string, tf.Tensor> = {};
    for (const [name, shape] of Object.entries(llamaWeightShapes(c))) tensors[name] = tf.zeros(shape);
    // k_proj as if head_dim were 16: what config.json says and what the file holds disagree.
    tensors['model.layers.1.self_attn.k_proj.weight'] = tf.zeros([c.numKvHeads * 16, c.hiddenSize]);
    writeSafetensors(join(folder, 'model.safetensors'), tensors);
    tf.dispose(Object.values(tensors));
    const tokenizer = join(sharedDataDir()!, 'tokenizers', 'smollm2', 'tokenizer.json');
    const e = await t.throwsAsync(loadModel(folder, { tokenizer }), { instanceOf: QrlhfError });
    t.regex(e!.message, new RegExp(`m/model\\.safetensors: tensor "model\\.layers\\.1\\.self_attn\\.k_proj\\.weight" has shape \\[${c.numKvHeads * 16}, ${c.hiddenSize}\\], expected \\[${c.numKvHeads * 8}, ${c.hiddenSize}\\]`));
    writeFileSync(join(folder, 'config.json'), JSON.stringify({ ...json, rope_scaling: { rope_type: 'dynamic', factor: 2 } }));
    const e2 = await t.throwsAsync(loadModel(folder, { tokenizer }), { instanceOf: QrlhfError });
    t.regex(e2!.message, /m\/config\.json: "rope_scaling\.rope_type" is "dynamic": rotary scaling of this type is not supported/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

maybe('with an eos list in config.json, the tokenizer\'s eos is tokenizer_config.json\'s eos_token when the list holds it (the end of a chat turn), else the list\'s first', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-hftok-'));
  try {
    copyFileSync(join(sharedDataDir()!, 'tokenizers', 'smollm2', 'tokenizer.json'), join(tmp, 'tokenizer.json'));
    copyFileSync(join(dir!, 'HuggingFaceTB--SmolLM2-135M-Instruct', 'tokenizer_config.json'), join(tmp, 'tokenizer_config.json'));
    // SmolLM2's eos_token is <|im_end|>, id 2.
    const inList = await Tokenizer.fromFile(join(tmp, 'tokenizer.json'), { bosTokenId: 1, eosTokenId: 0, eosTokenIds: [0, 2] });
    t.is(inList.eosId, 2);
    const notInList = await Tokenizer.fromFile(join(tmp, 'tokenizer.json'), { bosTokenId: 1, eosTokenId: 0, eosTokenIds: [0, 5] });
    t.is(notInList.eosId, 0);
    const single = await Tokenizer.fromFile(join(tmp, 'tokenizer.json'), { bosTokenId: 1, eosTokenId: 0 });
    t.is(single.eosId, 0, 'a single eos_token_id in config.json wins, as before');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

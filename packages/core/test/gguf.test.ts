/**
 * GGUF out, read back with an independent parser (@huggingface/gguf): the Llama metadata, the
 * tokenizer (byte-level BPE as "gpt2", SentencePiece-style and llama2.c as "llama" with scores),
 * tensor names, shapes (innermost first), types, and the data itself (q/k rows permuted to
 * llama.cpp's interleaved rotary layout; F16 within half precision).
 */
import test from 'ava';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gguf } from '@huggingface/gguf';
import { QrlhfError } from '../src/errors.js';
import { loadModel } from '../src/io/checkpoint.js';
import { ggufTokenizerMetadata, saveGguf } from '../src/io/gguf.js';
import { halfBitsToFloat } from '../src/io/safetensors.js';
import type { LlamaConfig } from '../src/model/config.js';
import { LlamaModel } from '../src/model/llama.js';
import { sharedDataFile } from '../src/paths.js';
import { Tokenizer } from '../src/tokenizer.js';

const root = mkdtempSync(join(tmpdir(), 'qrlhf-gguf-'));
const cfg: LlamaConfig = {
  vocabSize: 14, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-6, ropeTheta: 50000, tieWordEmbeddings: false, maxPositionEmbeddings: 64, bosTokenId: 1, eosTokenId: 2,
};
const TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}";

/** A byte-level BPE tokenizer.json with merges, two special tokens and a chat template. */
function bpeTokenizer(): Tokenizer {
  const vocab: Record<string, number> = { '<|unk|>': 0, '<|s|>': 1, '<|e|>': 2, a: 3, b: 4, c: 5, 'Ġ': 6, ab: 7, 'Ġa': 8, abc: 9 };
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return Tokenizer.fromJSON(
    {
      version: '1.0',
      added_tokens: [special(0, '<|unk|>'), special(1, '<|s|>'), special(2, '<|e|>')],
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: null,
      decoder: { type: 'ByteLevel' },
      model: { type: 'BPE', vocab, merges: ['a b', 'Ġ a', 'ab c'], unk_token: '<|unk|>', byte_fallback: false, fuse_unk: false },
    },
    { tokenizerConfig: { bos_token: '<|s|>', eos_token: '<|e|>', chat_template: TEMPLATE } },
  );
}

type Info = { name: string; shape: bigint[]; dtype: number; offset: bigint };

async function readBack(path: string) {
  const r = await gguf(path, { allowLocalFile: true });
  const bytes = readFileSync(path);
  const infos = new Map<string, Info>(r.tensorInfos.map((i) => [i.name, i as Info]));
  const data = (name: string): Float32Array => {
    const i = infos.get(name)!;
    const n = i.shape.reduce((a, s) => a * Number(s), 1);
    const at = Number(r.tensorDataOffset + i.offset);
    if (i.dtype === 0) return new Float32Array(bytes.buffer.slice(bytes.byteOffset + at, bytes.byteOffset + at + 4 * n));
    const h = new Uint16Array(bytes.buffer.slice(bytes.byteOffset + at, bytes.byteOffset + at + 2 * n));
    return Float32Array.from(h, halfBitsToFloat);
  };
  return { metadata: r.metadata as Record<string, unknown>, infos, data };
}

/** Reference for llama.cpp's q/k layout: HF row (h, s, i) [s·hd/2 + i in head h] goes to (h, i, s) [2i + s]. */
function interleavedReference(w: Float32Array, nHeads: number, hd: number, inDim: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < nHeads * hd; r++) {
    const h = Math.floor(r / hd);
    const s = Math.floor((r % hd) / (hd / 2));
    const i = (r % hd) % (hd / 2);
    for (let j = 0; j < inDim; j++) out[(h * hd + 2 * i + s) * inDim + j] = w[r * inDim + j]!;
  }
  return out;
}

test('a byte-level BPE model: metadata, tokenizer, names, shapes, types and data read back (F32 and F16)', async (t) => {
  const model = LlamaModel.random(cfg, 3);
  const tok = bpeTokenizer();
  for (const dtype of ['F32', 'F16'] as const) {
    const path = join(root, `bpe-${dtype}.gguf`);
    await saveGguf(path, model, tok, { dtype, name: 'tiny' });
    const { metadata: m, infos, data } = await readBack(path);
    t.like(m, {
      version: 3,
      'general.architecture': 'llama',
      'general.name': 'tiny',
      'general.file_type': dtype === 'F32' ? 0 : 1,
      'llama.context_length': 64,
      'llama.embedding_length': 16,
      'llama.block_count': 2,
      'llama.feed_forward_length': 24,
      'llama.attention.head_count': 4,
      'llama.attention.head_count_kv': 2,
      'llama.rope.freq_base': 50000,
      'llama.rope.dimension_count': 4,
      'tokenizer.ggml.model': 'gpt2',
      'tokenizer.ggml.pre': 'gpt-2',
      'tokenizer.ggml.bos_token_id': 1,
      'tokenizer.ggml.eos_token_id': 2,
      'tokenizer.chat_template': TEMPLATE,
    });
    t.true(Math.abs((m['llama.attention.layer_norm_rms_epsilon'] as number) - 1e-6) < 1e-12);
    const tokens = m['tokenizer.ggml.tokens'] as string[];
    t.is(tokens.length, 14); // the embedding's rows, the last four padding
    t.deepEqual(tokens.slice(6, 14), ['Ġ', 'ab', 'Ġa', 'abc', '[PAD10]', '[PAD11]', '[PAD12]', '[PAD13]']);
    t.deepEqual(Array.from(m['tokenizer.ggml.token_type'] as number[]), [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5]);
    t.deepEqual(m['tokenizer.ggml.merges'], ['a b', 'Ġ a', 'ab c']);
    // tensors: 2 + 9 per layer + output
    t.is(infos.size, 2 + 9 * 2 + 1);
    t.deepEqual(infos.get('token_embd.weight')!.shape, [16n, 14n]);
    t.deepEqual(infos.get('blk.1.attn_k.weight')!.shape, [16n, 8n]);
    t.deepEqual(infos.get('blk.0.ffn_down.weight')!.shape, [24n, 16n]);
    t.deepEqual(infos.get('output_norm.weight')!.shape, [16n]);
    t.is(infos.get('output_norm.weight')!.dtype, 0); // norms stay F32
    t.is(infos.get('blk.0.attn_q.weight')!.dtype, dtype === 'F32' ? 0 : 1);
    const tol = dtype === 'F32' ? 0 : 2e-3;
    const close = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Math.abs(v - b[i]!) <= tol * Math.max(1, Math.abs(b[i]!)));
    const w = (n: string) => model.weights[n]!.dataSync() as Float32Array;
    t.true(close(data('token_embd.weight'), w('model.embed_tokens.weight')));
    t.true(close(data('output.weight'), w('lm_head.weight')));
    t.true(close(data('blk.1.ffn_gate.weight'), w('model.layers.1.mlp.gate_proj.weight')));
    t.true(close(data('blk.1.attn_v.weight'), w('model.layers.1.self_attn.v_proj.weight')), 'v is not permuted');
    t.true(close(data('blk.1.attn_q.weight'), interleavedReference(w('model.layers.1.self_attn.q_proj.weight'), 4, 4, 16)));
    t.true(close(data('blk.1.attn_k.weight'), interleavedReference(w('model.layers.1.self_attn.k_proj.weight'), 2, 4, 16)));
    t.false(close(data('blk.1.attn_q.weight'), w('model.layers.1.self_attn.q_proj.weight')), 'q is permuted');
  }
  model.dispose();
});

test('a tied model has no output tensor; a tokenizer larger than the embedding is refused', async (t) => {
  const model = LlamaModel.random({ ...cfg, tieWordEmbeddings: true }, 4);
  const path = join(root, 'tied.gguf');
  await saveGguf(path, model, bpeTokenizer());
  const { infos } = await readBack(path);
  t.false(infos.has('output.weight'));
  t.is(infos.size, 2 + 9 * 2);
  model.dispose();
  const small = bpeTokenizer();
  const e = t.throws(() => ggufTokenizerMetadata(small, 5), { instanceOf: QrlhfError });
  t.regex(e!.message, /the tokenizer has 10 tokens, the model's embedding 5 rows/);
});

test('stories260K (llama2.c): a "llama" vocabulary with its own scores, byte tokens, tied output', async (t) => {
  const bin = sharedDataFile('models/stories260K/stories260K.bin');
  if (!bin) {
    t.log('skipped: ../shared/data/models/stories260K is absent');
    t.pass();
    return;
  }
  const { model, tokenizer } = await loadModel(bin);
  const path = join(root, 'stories.gguf');
  await saveGguf(path, model, tokenizer);
  const { metadata: m, infos } = await readBack(path);
  t.like(m, { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.bos_token_id': 1, 'tokenizer.ggml.eos_token_id': 2, 'llama.block_count': model.config.numLayers });
  const tokens = m['tokenizer.ggml.tokens'] as string[];
  const types = Array.from(m['tokenizer.ggml.token_type'] as number[]);
  t.is(tokens.length, 512);
  t.deepEqual(tokens.slice(0, 3), ['<unk>', '<s>', '</s>']);
  t.deepEqual(types.slice(0, 3), [2, 3, 3]);
  t.is(tokens[3 + 10], '<0x0A>');
  t.is(types[3 + 10], 6);
  t.true(tokens.some((x) => x.startsWith('\u2581')), "spaces written as SentencePiece's '▁'");
  t.deepEqual(Array.from(m['tokenizer.ggml.scores'] as number[]), Array.from(tokenizer.sentencePieceScores()!));
  t.is(infos.has('output.weight'), !model.config.tieWordEmbeddings);
  model.dispose();
});

test('shared tokenizers: Llama 2 as "llama" (scores −id), SmolLM2 as "gpt2" with the smollm pre-tokenizer', async (t) => {
  const llama2 = sharedDataFile('tokenizers/llama2/tokenizer.json');
  const smol = sharedDataFile('tokenizers/smollm2/tokenizer.json');
  if (!llama2 || !smol) {
    t.log('skipped: ../shared/data/tokenizers is absent');
    t.pass();
    return;
  }
  const a = new Map(ggufTokenizerMetadata(await Tokenizer.fromFile(llama2), 32000));
  t.deepEqual(a.get('tokenizer.ggml.model'), { type: 'string', value: 'llama' });
  const tokens = a.get('tokenizer.ggml.tokens')!.value as string[];
  const types = a.get('tokenizer.ggml.token_type')!.value as number[];
  t.deepEqual([tokens[0], tokens[1], tokens[2], tokens[13]], ['<unk>', '<s>', '</s>', '<0x0A>']);
  t.deepEqual([types[0], types[1], types[2], types[13], types[400]], [2, 3, 3, 6, 1]);
  t.is((a.get('tokenizer.ggml.scores')!.value as Float32Array)[400], -400);
  const b = new Map(ggufTokenizerMetadata(await Tokenizer.fromFile(smol), 49152));
  t.deepEqual(b.get('tokenizer.ggml.model'), { type: 'string', value: 'gpt2' });
  t.deepEqual(b.get('tokenizer.ggml.pre'), { type: 'string', value: 'smollm' });
  t.true((b.get('tokenizer.ggml.merges')!.value as string[]).length > 40000);
});

import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError } from '../src/errors.js';
import { Llama2cTokenizer, parseLlama2c, readLlama2c } from '../src/io/llama2c.js';
import { sharedDataFile } from '../src/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-l2c-'));

// ---- checkpoint ---------------------------------------------------------------------------

interface Spec { dim: number; hidden: number; layers: number; heads: number; kv: number; vocab: number; seq: number }

/** Writes a llama2.c checkpoint by hand; weights are a deterministic pseudo-random sequence. */
function makeCheckpoint(s: Spec, shared: boolean): { bytes: Buffer; floats: Float64Array } {
  const hd = s.dim / s.heads;
  const kvDim = s.kv * hd;
  const count =
    s.vocab * s.dim + s.layers * s.dim + s.layers * s.dim * s.dim + 2 * s.layers * kvDim * s.dim + s.layers * s.dim * s.dim +
    s.layers * s.dim + 3 * s.layers * s.hidden * s.dim + s.dim + s.seq * hd + (shared ? 0 : s.vocab * s.dim);
  const b = Buffer.alloc(28 + 4 * count);
  [s.dim, s.hidden, s.layers, s.heads, s.kv, shared ? s.vocab : -s.vocab, s.seq].forEach((v, i) => b.writeInt32LE(v, 4 * i));
  const floats = new Float64Array(count);
  let x = 12345;
  for (let i = 0; i < count; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    floats[i] = Math.fround((x / 2147483648 - 0.5) * 2);
    b.writeFloatLE(floats[i]!, 28 + 4 * i);
  }
  return { bytes: b, floats };
}

const small: Spec = { dim: 8, hidden: 12, layers: 2, heads: 2, kv: 1, vocab: 10, seq: 4 };

test('checkpoint: header becomes the config; unshared classifier is lm_head', (t) => {
  const { bytes } = makeCheckpoint(small, false);
  const { config, arrays } = parseLlama2c(bytes, 'x.bin');
  t.like(config, {
    vocabSize: 10, hiddenSize: 8, intermediateSize: 12, numLayers: 2, numHeads: 2, numKvHeads: 1,
    tieWordEmbeddings: false, maxPositionEmbeddings: 4, bosTokenId: 1, eosTokenId: 2, rmsNormEps: 1e-5, ropeTheta: 10000,
  });
  t.deepEqual(arrays['lm_head.weight']!.shape, [10, 8]);
  t.deepEqual(arrays['model.layers.1.self_attn.k_proj.weight']!.shape, [4, 8]);
  t.deepEqual(arrays['model.layers.1.mlp.down_proj.weight']!.shape, [8, 12]);
  t.is(Object.keys(arrays).length, 1 + 2 * 9 + 1 + 1);
  const tied = parseLlama2c(makeCheckpoint(small, true).bytes, 'y.bin');
  t.true(tied.config.tieWordEmbeddings);
  t.false('lm_head.weight' in tied.arrays);
});

test('checkpoint: weights land under the right names, in file order (w1 gate, w3 up, w2 down)', (t) => {
  const s = small;
  const { bytes, floats } = makeCheckpoint(s, false);
  const { arrays } = parseLlama2c(bytes);
  const hd = s.dim / s.heads;
  const kvDim = s.kv * hd;
  // Walk the file as llama2.c's run.c maps it.
  let off = 0;
  const take = (n: number) => {
    const a = Array.from(floats.subarray(off, off + n));
    off += n;
    return a;
  };
  const emb = take(s.vocab * s.dim);
  const rmsAtt = take(s.layers * s.dim);
  take(s.layers * s.dim * s.dim); // wq: checked by the rotary test
  take(s.layers * kvDim * s.dim); // wk
  const wv = take(s.layers * kvDim * s.dim);
  const wo = take(s.layers * s.dim * s.dim);
  const rmsFfn = take(s.layers * s.dim);
  const w1 = take(s.layers * s.hidden * s.dim);
  const w2 = take(s.layers * s.dim * s.hidden);
  const w3 = take(s.layers * s.hidden * s.dim);
  const rmsFinal = take(s.dim);
  take(s.seq * hd); // freq_cis real + imag
  const wcls = take(s.vocab * s.dim);
  t.is(off, floats.length);
  const got = (n: string) => Array.from(arrays[n]!.data);
  t.deepEqual(got('model.embed_tokens.weight'), emb);
  t.deepEqual(got('lm_head.weight'), wcls);
  t.deepEqual(got('model.norm.weight'), rmsFinal);
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    t.deepEqual(got(`${p}.input_layernorm.weight`), rmsAtt.slice(l * s.dim, (l + 1) * s.dim));
    t.deepEqual(got(`${p}.post_attention_layernorm.weight`), rmsFfn.slice(l * s.dim, (l + 1) * s.dim));
    t.deepEqual(got(`${p}.self_attn.v_proj.weight`), wv.slice(l * kvDim * s.dim, (l + 1) * kvDim * s.dim));
    t.deepEqual(got(`${p}.self_attn.o_proj.weight`), wo.slice(l * s.dim * s.dim, (l + 1) * s.dim * s.dim));
    const hs = s.hidden * s.dim;
    t.deepEqual(got(`${p}.mlp.gate_proj.weight`), w1.slice(l * hs, (l + 1) * hs));
    t.deepEqual(got(`${p}.mlp.down_proj.weight`), w2.slice(l * hs, (l + 1) * hs));
    t.deepEqual(got(`${p}.mlp.up_proj.weight`), w3.slice(l * hs, (l + 1) * hs));
  }
});

/** y = W x for W [out, in] row-major, float64. */
function matvec(w: ArrayLike<number>, x: number[], out: number, inn: number): number[] {
  const y = new Array<number>(out).fill(0);
  for (let i = 0; i < out; i++) for (let j = 0; j < inn; j++) y[i]! += w[i * inn + j]! * x[j]!;
  return y;
}

/** llama2.c's rotary embedding (run.c): consecutive pairs (i, i+1), frequency from i mod head size. */
function ropeInterleaved(v: number[], pos: number, hs: number): number[] {
  const o = v.slice();
  for (let i = 0; i < v.length; i += 2) {
    const freq = 1 / 10000 ** ((i % hs) / hs);
    const a = pos * freq;
    o[i] = v[i]! * Math.cos(a) - v[i + 1]! * Math.sin(a);
    o[i + 1] = v[i]! * Math.sin(a) + v[i + 1]! * Math.cos(a);
  }
  return o;
}

/** Hugging Face's rotate-half rotary embedding: within a head, pairs (j, j + hs/2). */
function ropeRotateHalf(v: number[], pos: number, hs: number): number[] {
  const o = v.slice();
  for (let h = 0; h < v.length / hs; h++) {
    for (let j = 0; j < hs / 2; j++) {
      const a = pos / 10000 ** ((2 * j) / hs);
      const x1 = v[h * hs + j]!;
      const x2 = v[h * hs + j + hs / 2]!;
      o[h * hs + j] = x1 * Math.cos(a) - x2 * Math.sin(a);
      o[h * hs + j + hs / 2] = x2 * Math.cos(a) + x1 * Math.sin(a);
    }
  }
  return o;
}

test('checkpoint: permuted q/k give the same attention scores under rotate-half as the originals under llama2.c rotary', (t) => {
  const s: Spec = { dim: 16, hidden: 8, layers: 1, heads: 2, kv: 1, vocab: 4, seq: 8 };
  const hd = s.dim / s.heads;
  const kvDim = s.kv * hd;
  const { bytes, floats } = makeCheckpoint(s, true);
  const { arrays } = parseLlama2c(bytes);
  const off = s.vocab * s.dim + s.layers * s.dim;
  const wqOrig = floats.subarray(off, off + s.dim * s.dim);
  const wkOrig = floats.subarray(off + s.dim * s.dim, off + s.dim * s.dim + kvDim * s.dim);
  const wq = arrays['model.layers.0.self_attn.q_proj.weight']!.data;
  const wk = arrays['model.layers.0.self_attn.k_proj.weight']!.data;
  const x1 = Array.from({ length: s.dim }, (_, i) => Math.sin(i + 1));
  const x2 = Array.from({ length: s.dim }, (_, i) => Math.cos(3 * i));
  let maxErr = 0;
  let maxScore = 0;
  for (const [pq, pk] of [[0, 0], [3, 1], [7, 2], [5, 5]] as const) {
    const qa = ropeInterleaved(matvec(wqOrig, x1, s.dim, s.dim), pq, hd);
    const ka = ropeInterleaved(matvec(wkOrig, x2, kvDim, s.dim), pk, hd);
    const qb = ropeRotateHalf(matvec(wq, x1, s.dim, s.dim), pq, hd);
    const kb = ropeRotateHalf(matvec(wk, x2, kvDim, s.dim), pk, hd);
    for (let h = 0; h < s.heads; h++) {
      const kh = Math.floor(h / (s.heads / s.kv));
      let sa = 0;
      let sb = 0;
      for (let j = 0; j < hd; j++) {
        sa += qa[h * hd + j]! * ka[kh * hd + j]!;
        sb += qb[h * hd + j]! * kb[kh * hd + j]!;
      }
      maxErr = Math.max(maxErr, Math.abs(sa - sb));
      maxScore = Math.max(maxScore, Math.abs(sa));
    }
  }
  t.true(maxScore > 0.1, 'scores are not trivially zero');
  t.true(maxErr < 1e-9, `max score difference ${maxErr}`);
  // Without the permutation the scores differ: the test can tell right from wrong.
  const qn = ropeRotateHalf(matvec(wqOrig, x1, s.dim, s.dim), 5, hd);
  const kn = ropeRotateHalf(matvec(wkOrig, x2, kvDim, s.dim), 1, hd);
  const qa = ropeInterleaved(matvec(wqOrig, x1, s.dim, s.dim), 5, hd);
  const ka = ropeInterleaved(matvec(wkOrig, x2, kvDim, s.dim), 1, hd);
  let dn = 0;
  let da = 0;
  for (let j = 0; j < hd; j++) {
    dn += qn[j]! * kn[j]!;
    da += qa[j]! * ka[j]!;
  }
  t.true(Math.abs(dn - da) > 1e-3);
});

test('checkpoint: malformed files are refused with the file and the fault', (t) => {
  const bad = (bytes: Buffer, re: RegExp) => {
    const p = join(dir, `bad-${Math.random().toString(36).slice(2)}.bin`);
    writeFileSync(p, bytes);
    const e = t.throws(() => readLlama2c(p), { instanceOf: QrlhfError });
    t.true(e!.message.startsWith(p), e!.message);
    t.regex(e!.message, re);
  };
  const { bytes } = makeCheckpoint(small, true);
  bad(bytes.subarray(0, 20), /shorter than the 28-byte header/);
  bad(bytes.subarray(0, bytes.length - 4), /implies \d+ bytes, but the file has \d+ \(truncated\?\)/);
  bad(Buffer.concat([bytes, Buffer.alloc(8)]), /implies \d+ bytes, but the file has/);
  const neg = Buffer.from(bytes);
  neg.writeInt32LE(-3, 8);
  bad(neg, /n_layers = -3/);
  const odd = Buffer.from(bytes);
  odd.writeInt32LE(3, 12);
  bad(odd, /not divisible by n_heads 3/);
  const magic = Buffer.from(bytes);
  magic.writeUInt32LE(0x616b3432, 0);
  magic.writeInt32LE(1, 4);
  bad(magic, /"ak42" magic .* version 1/);
  const nan = Buffer.from(bytes);
  nan.writeFloatLE(NaN, 28 + 4 * 5);
  bad(nan, /weight token_embedding holds a non-finite value/);
  const e = t.throws(() => readLlama2c(join(dir, 'missing.bin')), { instanceOf: QrlhfError });
  t.regex(e!.message, /cannot read/);
});

const stories = sharedDataFile('models/stories260K/stories260K.bin');
const maybeStories = stories ? test : test.skip;

maybeStories('checkpoint: the real stories260K file reads with MANIFEST shapes', (t) => {
  const { config, tensors } = readLlama2c(stories!);
  t.like(config, { hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8, numKvHeads: 4, vocabSize: 512, maxPositionEmbeddings: 512, tieWordEmbeddings: true });
  t.deepEqual(tensors['model.layers.4.self_attn.k_proj.weight']!.shape, [32, 64]);
  const raw = readFileSync(stories!);
  const emb = tensors['model.embed_tokens.weight']!.dataSync();
  for (const i of [0, 1, 777, 512 * 64 - 1]) t.is(emb[i], raw.readFloatLE(28 + 4 * i));
  for (const x of Object.values(tensors)) x.dispose();
});

// ---- tokenizer ----------------------------------------------------------------------------

/** Writes a llama2.c tokenizer file: int32 max length, then (float32 score, int32 length, bytes). */
function tokenizerFile(pieces: [string, number][]): Buffer {
  const parts: Buffer[] = [];
  let max = 0;
  for (const [p, score] of pieces) {
    const b = Buffer.from(p, 'utf8');
    max = Math.max(max, b.length);
    const h = Buffer.alloc(8);
    h.writeFloatLE(score, 0);
    h.writeInt32LE(b.length, 4);
    parts.push(h, b);
  }
  const head = Buffer.alloc(4);
  head.writeInt32LE(max, 0);
  return Buffer.concat([head, ...parts]);
}

function toyPieces(): [string, number][] {
  const p: [string, number][] = [['<unk>', 0], ['\n<s>\n', 0], ['\n</s>\n', 0]];
  for (let b = 0; b < 256; b++) p.push([`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 0]);
  // 259.. : characters, then merged pieces with their scores
  p.push([' ', -100], ['a', -101], ['b', -102], ['c', -103]);
  p.push(['ab', -1], ['bc', 0], [' a', -2], ['abc', -3], ['aa', -1], [' bc', -0.5]);
  return p;
}

test('tokenizer: the llama2.c merge rule worked by hand', (t) => {
  const tok = Llama2cTokenizer.parse(tokenizerFile(toyPieces()), 'toy.bin');
  const id = (s: string) => tok.pieces.indexOf(s);
  t.is(tok.vocabSize, 259 + 10);
  // " abc": [' ','a','b','c'] -> best 'bc' (0) -> [' ','a','bc'] -> ' a' (-2) beats 'abc' (-3) -> [' a','bc']
  t.deepEqual(tok.encode('abc'), [id(' a'), id('bc')]);
  // "aaa": two equal 'aa' candidates: the leftmost merges -> [' ', 'aa', 'a']
  t.deepEqual(tok.encode('aaa'), [id(' '), id('aa'), id('a')]);
  // "b c" -> [' ', 'b', ' ', 'c']: no adjacent pair is a piece (' bc' is unreachable)
  t.deepEqual(tok.encode('b c'), [id(' '), id('b'), id(' '), id('c')]);
  // 'é' is not a piece: its UTF-8 bytes 0xC3 0xA9 as <0xC3><0xA9> (ids byte + 3)
  t.deepEqual(tok.encode('é'), [id(' '), 0xc3 + 3, 0xa9 + 3]);
  t.deepEqual(tok.encode(''), []);
  t.is(tok.decode(tok.encode('abc')), 'abc');
  t.is(tok.decode([1, ...tok.encode('é a')]), '<s> é a');
  t.is(tok.decode([1, ...tok.encode('é a'), 2], { skipSpecial: true }), 'é a');
  t.is(tok.decode([0xc3 + 3]), '\ufffd', 'a lone UTF-8 lead byte decodes to U+FFFD');
});

/** run.c's encode() transcribed literally (rescan all pairs every round) as the reference. */
function naiveEncode(tok: Llama2cTokenizer, text: string): number[] {
  const lookup = new Map<string, number>();
  tok.pieces.forEach((p, i) => {
    if (!lookup.has(p)) lookup.set(p, i);
  });
  const ids: number[] = [lookup.get(' ')!];
  for (const ch of text) {
    const id = lookup.get(ch);
    if (id !== undefined) ids.push(id);
    else for (const b of Buffer.from(ch, 'utf8')) ids.push(b + 3);
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i + 1 < ids.length; i++) {
      const id = lookup.get(tok.pieces[ids[i]!]! + tok.pieces[ids[i + 1]!]!);
      if (id !== undefined && tok.scores[id]! > best) {
        best = tok.scores[id]!;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx < 0) break;
    ids.splice(bestIdx, 2, bestId);
  }
  return ids;
}

const tok512 = sharedDataFile('models/stories260K/tok512.bin');
const maybeTok = tok512 ? test : test.skip;

maybeTok('tokenizer: the heap encoder equals run.c\'s rescanning loop on random and real text (tok512)', (t) => {
  const tok = Llama2cTokenizer.read(tok512!);
  t.is(tok.vocabSize, 512);
  t.is(tok.maxTokenLength, 7);
  const alphabet = ' aeioustnhrl.,!?\'"\nxyzé世😀Ww  ';
  let seed = 7;
  const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const texts = ['Once upon a time, there was a little girl named Lily. She loved to play outside in the park.'];
  for (let k = 0; k < 200; k++) {
    const n = 1 + Math.floor(rand() * 60);
    texts.push(Array.from({ length: n }, () => Array.from(alphabet)[Math.floor(rand() * Array.from(alphabet).length)]).join(''));
  }
  for (const s of texts) t.deepEqual(tok.encode(s), naiveEncode(tok, s), JSON.stringify(s));
  for (const s of texts) t.is(tok.decode(tok.encode(s)), s, JSON.stringify(s));
});

test('tokenizer: malformed files are refused', (t) => {
  const good = tokenizerFile(toyPieces());
  const e1 = t.throws(() => Llama2cTokenizer.parse(good.subarray(0, good.length - 1), 't.bin'), { instanceOf: QrlhfError });
  t.regex(e1!.message, /^t\.bin: not a llama2\.c tokenizer: token \d+: its \d+ bytes run past the end of the file/);
  const long = Buffer.from(good);
  long.writeInt32LE(1, 0); // max_token_length 1, but pieces are longer
  const e2 = t.throws(() => Llama2cTokenizer.parse(long, 't.bin'), { instanceOf: QrlhfError });
  t.regex(e2!.message, /token 0 at byte 8: length 5 outside 0\.\.max_token_length 1/);
  const e3 = t.throws(() => Llama2cTokenizer.parse(Buffer.alloc(2), 't.bin'), { instanceOf: QrlhfError });
  t.regex(e3!.message, /too short/);
  const tok = Llama2cTokenizer.parse(good, 't.bin');
  t.throws(() => tok.decode([9999]), { instanceOf: QrlhfError, message: /token id 9999 is outside the vocabulary/ });
});

import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Rng, Tokenizer } from '@qrlhf/core';
import { ASSISTANT_TAG, HUMAN_TAG, createWorld } from '../src/index.js';

const world = createWorld(5);
const json = world.tokenizerJson();
const hf = new HfTokenizer(json, world.tokenizerConfigJson());
const enc = (s: string) => hf.encode(s, { add_special_tokens: false }).ids;
const dec = (ids: number[]) => (ids.length === 0 ? '' : hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));

/**
 * Reference byte-level BPE encoder, written from the algorithm's definition: bytes -> GPT-2
 * characters per pre-token, then repeatedly merge the adjacent pair of lowest merge rank.
 */
function referenceEncode(text: string): number[] {
  const vocab = json.model.vocab;
  const rank = new Map(json.model.merges.map((m, i) => [m, i]));
  const b2u: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    b2u.push(String.fromCodePoint(keep ? b : 256 + n++));
  }
  const out: number[] = [];
  const specials = [HUMAN_TAG, ASSISTANT_TAG, '<s>', '</s>', '<pad>'];
  const parts = text.split(new RegExp(`(${specials.map((s) => s.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')).join('|')})`));
  for (const part of parts) {
    if (part === '') continue;
    if (specials.includes(part)) { out.push(vocab[part]!); continue; }
    for (const m of part.matchAll(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu)) {
      let syms = Array.from(new TextEncoder().encode(m[0]), (b) => b2u[b]!);
      for (;;) {
        let best = -1;
        let bestRank = Infinity;
        for (let i = 0; i + 1 < syms.length; i++) {
          const r = rank.get(`${syms[i]} ${syms[i + 1]}`);
          if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
        }
        if (best < 0) break;
        syms = [...syms.slice(0, best), syms[best]! + syms[best + 1]!, ...syms.slice(best + 2)];
      }
      for (const s of syms) out.push(vocab[s]!);
    }
  }
  return out;
}

function worldTexts(n: number): { prompt: string; response: string }[] {
  const rng = new Rng(17);
  return Array.from({ length: n }, () => {
    const prompt = world.samplePrompt(rng);
    return { prompt, response: world.sampleResponse(prompt, rng, { garbleRate: 0.1 }) };
  });
}

test('special tokens and markers have fixed ids; the vocabulary is small', (t) => {
  t.is(hf.token_to_id('<s>'), 0);
  t.is(hf.token_to_id('</s>'), 1);
  t.is(hf.token_to_id('<pad>'), 2);
  t.deepEqual(enc(HUMAN_TAG), [3]);
  t.deepEqual(enc(ASSISTANT_TAG), [4]);
  const size = Math.max(...hf.get_vocab(true).values()) + 1;
  t.is(size, Object.keys(json.model.vocab).length);
  t.true(size <= world.params.vocabSize && size >= 300);
  // in templated text (no garbled sentence) every word and punctuation mark is one token
  const rng = new Rng(3);
  for (let i = 0; i < 300; i++) {
    const p = world.samplePrompt(rng);
    const text = p + world.sampleResponse(p, rng);
    let pieces = 0;
    for (const part of text.split(/\n\nHuman:|\n\nAssistant:/)) pieces += 1 + (part.match(/ ?\p{L}+| ?[^\s\p{L}\p{N}]+/gu) ?? []).length;
    t.is(enc(text).length, pieces - 1, JSON.stringify(text));
  }
});

test('world texts round-trip exactly and split at the prompt boundary', (t) => {
  let respTokens = 0;
  const texts = worldTexts(1500);
  for (const { prompt, response } of texts) {
    const ids = enc(prompt + response);
    t.is(dec(ids), prompt + response);
    // a prompt ends on a token boundary, so prompt and response can be tokenized apart
    t.deepEqual(ids, [...enc(prompt), ...enc(response)]);
    respTokens += enc(response).length;
  }
  const mean = respTokens / texts.length;
  t.log(`mean response length: ${mean.toFixed(1)} tokens`);
  t.true(mean > 8 && mean < 40);
});

test('the library encodes like a reference BPE written from the algorithm', (t) => {
  const odd = ['Ünïcödé ✓ 漢字 🙂\ttab\r\nCRLF   spaces  ', '<s>x</s><pad>', "it's don't we'll", '1234 56,7.8!?', ''];
  const texts = [...worldTexts(300).map((x) => x.prompt + x.response), ...odd];
  for (const s of texts) t.deepEqual(enc(s), referenceEncode(s), JSON.stringify(s));
});

test('arbitrary text round-trips (byte-level alphabet)', (t) => {
  for (const s of ['Ünïcödé ✓ 漢字 🙂\ttab\r\nCRLF   spaces  ', '\n\n\nHuman:: x \n\nAssistant:\n', 'a .b ,c ?d', "we're n't 's"]) {
    t.is(dec(enc(s)), s);
  }
});

test('the core Tokenizer loads the written tokenizer.json + tokenizer_config.json', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-tok-'));
  try {
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(world.tokenizerConfigJson()));
    const tok = await Tokenizer.fromFile(join(dir, 'tokenizer.json'));
    t.is(tok.bosId, 0);
    t.is(tok.eosId, 1);
    t.is(tok.padId, 2);
    for (const { prompt, response } of worldTexts(50)) {
      const ids = tok.encode(prompt + response, { addBos: true });
      t.is(ids[0], 0);
      t.deepEqual(ids.slice(1), enc(prompt + response));
      t.is(tok.decode([...ids, 1], { skipSpecial: true }), prompt + response);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

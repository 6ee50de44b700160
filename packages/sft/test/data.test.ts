import test from 'ava';
import { tokenizeExample, tokenizeExamples, splitHeldOut, ExampleStream, padBatch, type SftTokenizer } from '../src/data.js';

/** A word-level toy tokenizer: each space-prefixed word is one token, like a sentencepiece piece. */
function wordTokenizer(): SftTokenizer & { vocab: Map<string, number> } {
  const vocab = new Map<string, number>();
  return {
    vocab,
    bosId: 1,
    eosId: 2,
    encode(text: string) {
      return (text.match(/\s*\S+/g) ?? []).map((w) => {
        if (!vocab.has(w)) vocab.set(w, vocab.size + 3);
        return vocab.get(w)!;
      });
    },
  };
}

test('an example is BOS + prompt + response + EOS with the loss on the response and EOS', (t) => {
  const tok = wordTokenizer();
  const { example, mismatch } = tokenizeExample(tok, '\n\nHuman: hi there\n\nAssistant:', ' hello friend');
  t.false(mismatch);
  const p = tok.encode('\n\nHuman: hi there\n\nAssistant:');
  t.deepEqual(example.ids, [1, ...p, tok.vocab.get(' hello')!, tok.vocab.get(' friend')!, 2]);
  t.is(example.promptLength, 1 + p.length);
  const b = padBatch([example], 0);
  t.deepEqual([...b.lossMask].map((x, i) => (x ? example.ids[i] : -1)).filter((x) => x !== -1),
    [tok.vocab.get(' hello'), tok.vocab.get(' friend'), 2]);
});

test('a token merging across the prompt/response boundary falls back to separate encodings', (t) => {
  // a tokenizer that glues "Assistant:" and a following "x" into one token
  const tok: SftTokenizer = {
    bosId: 1,
    eosId: 2,
    encode: (s) => (s.endsWith(':x') ? [10, 11] : s === 'A:' ? [10, 12] : s === 'x' ? [13] : [99]),
  };
  const { example, mismatch } = tokenizeExample(tok, 'A:', 'x');
  t.true(mismatch);
  t.deepEqual(example.ids, [1, 10, 12, 13, 2]);
});

test('examples longer than maxLength are filtered out, not truncated, and counted', (t) => {
  const tok = wordTokenizer();
  const pairs = [
    { prompt: 'a b', response: ' c' }, // 1 + 2 + 1 + 1 = 5
    { prompt: 'a b c d', response: ' e f' }, // 8
    { prompt: 'a', response: ' b c' }, // 5
  ];
  const { examples, stats } = tokenizeExamples(tok, pairs, 5);
  t.is(examples.length, 2);
  t.deepEqual(stats, { total: 3, tooLong: 1, boundaryMismatch: 0 });
  t.true(examples.every((e) => e.ids.length <= 5));
});

test('right padding: masks, counts and pad ids', (t) => {
  const b = padBatch(
    [
      { ids: [1, 5, 6, 2], promptLength: 2 },
      { ids: [1, 7, 2], promptLength: 1 },
    ],
    0,
  );
  t.is(b.length, 4);
  t.deepEqual([...b.ids], [1, 5, 6, 2, 1, 7, 2, 0]);
  t.deepEqual([...b.attention], [1, 1, 1, 1, 1, 1, 1, 0]);
  t.deepEqual([...b.lossMask], [0, 0, 1, 1, 0, 1, 1, 0]);
  t.is(b.lossTokens, 4);
  t.is(b.tokens, 7);
});

test('held-out split: deterministic, disjoint, covering, sized by the fraction', (t) => {
  const items = [...Array(50).keys()];
  const a = splitHeldOut(items, 0.1, 42);
  const b = splitHeldOut(items, 0.1, 42);
  const c = splitHeldOut(items, 0.1, 43);
  t.deepEqual(a, b);
  t.notDeepEqual(a.heldOut, c.heldOut);
  t.is(a.heldOut.length, 5);
  t.deepEqual([...a.train, ...a.heldOut].sort((x, y) => x - y), items);
  t.deepEqual(splitHeldOut(items, 0, 1).heldOut, []);
});

test('the example stream is a permutation per epoch and a pure function of the position', (t) => {
  const s = new ExampleStream(7, 5);
  const all = s.slice(0, 21);
  for (let e = 0; e < 3; e++) t.deepEqual(all.slice(7 * e, 7 * e + 7).sort(), [0, 1, 2, 3, 4, 5, 6]);
  t.notDeepEqual(all.slice(0, 7), all.slice(7, 14));
  const fresh = new ExampleStream(7, 5);
  t.deepEqual(fresh.slice(12, 17), all.slice(12, 17));
});

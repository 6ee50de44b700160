/**
 * QRM features in a chat template's format (SPEC §4): with Meta-Llama-3-8B-Instruct's
 * tokenizer_config.json over a character tokenizer holding Llama 3's special tokens, the sequence
 * is the rendered dialogue (one <|begin_of_text|>, the reply closed by <|eot_id|>) and the prompt
 * feature sits at the <|eot_id|> that closes the last user turn, the start of the pattern where
 * the released QRM reads its gate input (RewardBench's find_token_for_gating).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Tokenizer, dialogueFormatFor, sharedDataFile, type LlamaConfig } from '@qrlhf/core';
import { encodeDialogue, findGatePosition, pairFeatures } from '@qrlhf/qrm';

const cfgPath = sharedDataFile('hf-configs/meta-llama--Meta-Llama-3-8B-Instruct/tokenizer_config.json');
if (!cfgPath) console.log('hf-configs not found under the shared data folder: QRM chat-template tests skipped');
const maybe = cfgPath ? test : test.skip;

const SPECIAL = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>'];

/** Characters as tokens, plus Llama 3's special tokens; Llama 3's tokenizer_config (with add_bos_token: true, to see that BOS is not doubled). */
function llama3CharTokenizer(): Tokenizer {
  const vocab: Record<string, number> = {};
  SPECIAL.forEach((s, i) => (vocab[s] = i));
  for (const c of " abcdefghijklmnopqrstuvwxyz:.\n,?!'") vocab[c] = Object.keys(vocab).length;
  const added = SPECIAL.map((content, id) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false }));
  const cfg = JSON.parse(readFileSync(cfgPath!, 'utf8')) as Record<string, unknown>;
  return Tokenizer.fromJSON(
    { version: '1.0', added_tokens: added, normalizer: null, pre_tokenizer: null, post_processor: null, decoder: { type: 'Fuse' },
      model: { type: 'BPE', vocab, merges: [], unk_token: null, fuse_unk: false, byte_fallback: false } },
    { tokenizerConfig: { ...cfg, add_bos_token: true, added_tokens_decoder: undefined } },
  );
}

const CONFIG: LlamaConfig = {
  vocabSize: 48, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 500000, tieWordEmbeddings: true, maxPositionEmbeddings: 512, bosTokenId: 0, eosTokenId: 2,
};

const PROMPT = '\n\nHuman: hi\n\nAssistant: yo\n\nHuman: why?\n\nAssistant:';
const H = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;

maybe('Llama 3 template: the sequence is the rendered dialogue and the prompt feature sits at the <|eot_id|> closing the last user turn', (t) => {
  const tok = llama3CharTokenizer();
  const format = dialogueFormatFor('auto', tok);
  t.truthy(format.template);
  const e = encodeDialogue(tok, format, PROMPT, ' because.', 512);
  // written by hand from Llama 3's documented format
  t.is(tok.decode(e.ids), `<|begin_of_text|>${H('user')}hi<|eot_id|>${H('assistant')}yo<|eot_id|>${H('user')}why?<|eot_id|>${H('assistant')}because.<|eot_id|>`);
  t.is(e.ids.filter((id) => id === 0).length, 1, 'one BOS');
  t.is(e.ids[e.promptEnd], tok.tokenToId('<|eot_id|>'));
  t.true(tok.decode(e.ids.slice(0, e.promptEnd + 1)).endsWith(`${H('user')}why?<|eot_id|>`));
  t.is(tok.decode(e.ids.slice(e.promptEnd + 1)), `${H('assistant')}because.<|eot_id|>`);
  // RewardBench's rule: the last occurrence of <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
  const pattern = tok.encode(`<|eot_id|>${H('assistant')}`);
  t.is(findGatePosition(e.ids, pattern, 'test'), e.promptEnd);
  // HH texts stay as they are with 'hh'
  const hh = encodeDialogue(tok, dialogueFormatFor('hh', tok), 'abc:', ' d', 512);
  t.deepEqual(hh.ids, tok.encode('abc: d', { addBos: true }));
});

maybe('pairFeatures in the template format: the prompt feature is the hidden state at that <|eot_id|>', async (t) => {
  const tok = llama3CharTokenizer();
  const model = LlamaModel.random(CONFIG, 7);
  const format = dialogueFormatFor('auto', tok);
  const items = [{ prompt: PROMPT, response: ' because.' }, { prompt: 'tell me a joke.', response: 'no.' }];
  const f = await pairFeatures({ model, tokenizer: tok }, items, { format, batchSize: 2 });
  const d = CONFIG.hiddenSize;
  items.forEach((it, i) => {
    const ids = encodeDialogue(tok, format, it.prompt, it.response, 512).ids;
    const pos = findGatePosition(ids, tok.encode(`<|eot_id|>${H('assistant')}`), 'test');
    const h = tf.tidy(() => model.hidden(tf.tensor2d([ids], [1, ids.length], 'int32')));
    const all = h.dataSync() as Float32Array;
    h.dispose();
    let mp = 0;
    let mr = 0;
    for (let j = 0; j < d; j++) {
      mp = Math.max(mp, Math.abs(f.prompt[i * d + j]! - all[pos * d + j]!));
      mr = Math.max(mr, Math.abs(f.response[i * d + j]! - all[(ids.length - 1) * d + j]!));
    }
    t.true(mp < 1e-4, `prompt feature of item ${i}: ${mp}`);
    t.true(mr < 1e-4, `response feature of item ${i}: ${mr}`);
  });
  model.dispose();
});

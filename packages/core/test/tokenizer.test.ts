import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { QrlhfError } from '../src/errors.js';
import { sharedDataFile } from '../src/paths.js';
import { Tokenizer } from '../src/tokenizer.js';

const llamaJson = sharedDataFile('tokenizers/llama2/tokenizer.json');
const llamaBin = sharedDataFile('tokenizers/llama2/tokenizer.bin');
const smolJson = sharedDataFile('tokenizers/smollm2/tokenizer.json');
const tok512 = sharedDataFile('models/stories260K/tok512.bin');
const hh = sharedDataFile('hh-rlhf/harmless-base-test.jsonl.gz');
const dir = mkdtempSync(join(tmpdir(), 'qrlhf-tok-'));

/** The first n dialogues of HH-RLHF (chosen and rejected), read with node:zlib. */
function hhTexts(n: number): string[] {
  const lines = gunzipSync(readFileSync(hh!)).toString('utf8').split('\n').filter((l) => l.trim().length > 0);
  const out: string[] = [];
  for (const line of lines.slice(0, n)) {
    const row = JSON.parse(line) as { chosen: string; rejected: string };
    out.push(row.chosen, row.rejected);
  }
  return out;
}
const N_DIALOGUES = 200; // 400 texts

const maybeLlama = llamaJson && hh ? test : test.skip;
const maybeSmol = smolJson && hh ? test : test.skip;
const maybeBin = llamaJson && llamaBin && hh ? test : test.skip;
const maybe512 = tok512 && hh ? test : test.skip;

maybeLlama('llama2 tokenizer.json: known ids, special tokens, BOS/EOS', async (t) => {
  const tok = await Tokenizer.fromFile(llamaJson!);
  t.is(tok.vocabSize, 32000);
  t.is(tok.bosId, 1);
  t.is(tok.eosId, 2);
  t.true(tok.defaultAddBos);
  // Llama 2's widely published ids: "▁Hello" 15043, "▁world" 3186
  t.deepEqual(tok.encode('Hello world'), [15043, 3186]);
  t.deepEqual(tok.encode('Hello world', { addBos: true }), [1, 15043, 3186]);
  t.is(tok.tokenToId('\u2581Hello'), 15043);
  t.is(tok.idToToken(3186), '\u2581world');
  t.deepEqual(tok.encode(''), []);
  t.is(tok.decode([]), '');
  t.is(tok.decode([1, 15043, 3186, 2]), '<s> Hello world</s>');
  t.is(tok.decode([1, 15043, 3186, 2], { skipSpecial: true }), 'Hello world');
  t.throws(() => tok.decode([32000]), { instanceOf: QrlhfError, message: /token id 32000 is outside the vocabulary/ });
});

maybeLlama('llama2 tokenizer.json: HH-RLHF dialogues round-trip exactly', async (t) => {
  const tok = await Tokenizer.fromFile(llamaJson!);
  const texts = hhTexts(N_DIALOGUES);
  let tokens = 0;
  for (const s of texts) {
    const ids = tok.encode(s);
    tokens += ids.length;
    if (tok.decode(ids) !== s) t.fail(`round trip failed for ${JSON.stringify(s.slice(0, 80))}`);
  }
  t.true(tokens > texts.length * 20, `${tokens} tokens`);
  t.pass();
});

maybeSmol('smollm2 tokenizer.json: HH-RLHF dialogues round-trip exactly; ids as the library gives them', async (t) => {
  const tok = await Tokenizer.fromFile(smolJson!);
  t.is(tok.vocabSize, 49152);
  t.false(tok.defaultAddBos);
  t.is(tok.idToToken(tok.eosId), '<|endoftext|>');
  const direct = new HfTokenizer(JSON.parse(readFileSync(smolJson!, 'utf8')) as object, {});
  const texts = hhTexts(N_DIALOGUES);
  for (const s of texts) {
    const ids = tok.encode(s);
    if (tok.decode(ids) !== s) t.fail(`round trip failed for ${JSON.stringify(s.slice(0, 80))}`);
  }
  // byte-level BPE: every id sequence is the library's own (no special tokens added)
  for (const s of texts.slice(0, 20)) t.deepEqual(tok.encode(s), direct.encode(s, { add_special_tokens: false }).ids);
  // a digit is split alone (Digits pre-tokenizer, individual_digits)
  t.deepEqual(tok.encode('2024').map((i) => tok.idToToken(i)), ['2', '0', '2', '4']);
});

maybeBin('llama2.c tokenizer.bin with the llama2.c encoder gives the ids of the Llama 2 tokenizer.json', async (t) => {
  const json = await Tokenizer.fromFile(llamaJson!);
  const bin = Tokenizer.fromLlama2c(llamaBin!);
  t.is(bin.vocabSize, 32000);
  const texts = [
    'Hello world',
    'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.',
    "I'm not sure what you mean -- could you say it again?",
    ...hhTexts(N_DIALOGUES),
  ];
  let differ = 0;
  for (const s of texts) {
    const a = json.encode(s);
    const b = bin.encode(s);
    if (a.join() !== b.join()) differ++;
    if (bin.decode(b) !== s) t.fail(`llama2.c decoder round trip failed for ${JSON.stringify(s.slice(0, 80))}`);
  }
  t.is(differ, 0, `${differ} of ${texts.length} texts tokenised differently`);
});

maybe512('tok512.bin converted to tokenizer.json: @huggingface/tokenizers gives the llama2.c ids and text', (t) => {
  const native = Tokenizer.fromLlama2c(tok512!);
  const doc = native.toJSON();
  // load with the library directly (not through our wrapper) and through the wrapper
  const lib = new HfTokenizer(JSON.parse(JSON.stringify(doc)) as object, { clean_up_tokenization_spaces: false });
  const converted = Tokenizer.fromJSON(doc);
  t.is(converted.vocabSize, 512);
  t.is(converted.bosId, 1);
  t.is(converted.eosId, 2);
  t.true(converted.defaultAddBos);
  const texts = ['Once upon a time, there was a little girl named Lily.', '  leading spaces, tabs\tand é 世 😀', ...hhTexts(N_DIALOGUES)];
  for (const s of texts) {
    const ids = native.encode(s);
    const libIds = lib.encode(s).ids; // with the post-processor: BOS first
    if (libIds.join() !== [1, ...ids].join()) t.fail(`ids differ for ${JSON.stringify(s.slice(0, 80))}`);
    if (converted.decode(ids) !== s || native.decode(ids) !== s) t.fail(`decode differs for ${JSON.stringify(s.slice(0, 80))}`);
    const withSpecial = [1, ...ids, 2];
    if (lib.decode(withSpecial) !== native.decode(withSpecial)) t.fail('decode with special tokens differs');
    if (lib.decode(withSpecial, { skip_special_tokens: true }) !== native.decode(withSpecial, { skipSpecial: true })) t.fail('skip-special decode differs');
  }
  t.pass();
});

maybe512('fromFile: a folder, tokenizer_config.json beside it, and the model config decide the special ids', async (t) => {
  const native = Tokenizer.fromLlama2c(tok512!);
  const folder = join(dir, 'folder');
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'tokenizer.json'), JSON.stringify(native.toJSON()));
  const plain = await Tokenizer.fromFile(folder);
  t.is(plain.padId, 2); // no pad token: EOS
  writeFileSync(join(folder, 'tokenizer_config.json'), JSON.stringify({ bos_token: '</s>', eos_token: { content: '<s>' }, pad_token: '<unk>', add_bos_token: false }));
  const cfg = await Tokenizer.fromFile(join(folder, 'tokenizer.json'));
  t.is(cfg.bosId, 2);
  t.is(cfg.eosId, 1);
  t.is(cfg.padId, 0);
  t.false(cfg.defaultAddBos);
  const model = await Tokenizer.fromFile(folder, { bosTokenId: 5, eosTokenId: 6 });
  t.is(model.bosId, 5);
  t.is(model.eosId, 6);
  t.deepEqual(model.encode('a', { addBos: true })[0], 5);
  const conf = model.toConfigJSON();
  t.like(conf, { bos_token: native.idToToken(5), eos_token: native.idToToken(6), pad_token: '<unk>', add_bos_token: false });
  // a .bin given to fromFile is read as llama2.c's format
  const viaFile = await Tokenizer.fromFile(tok512!);
  t.deepEqual(viaFile.encode('Once upon a time'), native.encode('Once upon a time'));
  writeFileSync(join(folder, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<nope>' }));
  await t.throwsAsync(() => Tokenizer.fromFile(folder), { instanceOf: QrlhfError, message: /"eos_token" is "<nope>", which is not in the vocabulary/ });
});

test('fromFile: missing files and bad JSON are QrlhfErrors naming the file', async (t) => {
  await t.throwsAsync(() => Tokenizer.fromFile(join(dir, 'nope.json')), { instanceOf: QrlhfError, message: /nope\.json: tokenizer file not found/ });
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{"model": ');
  await t.throwsAsync(() => Tokenizer.fromFile(bad), { instanceOf: QrlhfError, message: /bad\.json: not valid JSON/ });
  const noModel = join(dir, 'nomodel.json');
  writeFileSync(noModel, '{"version": "1.0"}');
  await t.throwsAsync(() => Tokenizer.fromFile(noModel), { instanceOf: QrlhfError, message: /nomodel\.json: "model" is missing/ });
  const empty = join(dir, 'empty');
  mkdirSync(empty, { recursive: true });
  await t.throwsAsync(() => Tokenizer.fromFile(empty), { instanceOf: QrlhfError, message: /folder has no tokenizer\.json/ });
});

/**
 * SFT with a chat template (chatTemplate 'auto') on HH-RLHF rows, with a SmolLM2-shaped tiny random
 * model: SmolLM2's real tokenizer.json and tokenizer_config.json (its ChatML template), a Llama of
 * SmolLM2's vocabulary and token ids but a few thousand hidden parameters. The loss mask must
 * cover exactly the final assistant turn and its <|im_end|>: checked by decoding the masked tokens
 * and comparing them with the HH text's last Assistant turn, read here with plain string search.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  LlamaModel, Rng, Tokenizer, dialogueFormatFor, readSftExamples, saveHfFolder, sharedDataFile, type LlamaConfig,
} from '@qrlhf/core';
import { formatExamples, padBatch, tokenizeExamples } from '../src/data.js';
import { runSft } from '../src/train.js';
import { tinyConfig, tmp, writeJsonl, hhRows } from './fixture.js';

const hh = sharedDataFile('hh-rlhf/harmless-base-test.jsonl.gz');
const smolTok = sharedDataFile('tokenizers/smollm2/tokenizer.json');
const smolCfg = sharedDataFile('hf-configs/HuggingFaceTB--SmolLM2-135M-Instruct/tokenizer_config.json');
if (!hh || !smolTok || !smolCfg) console.log('hh-rlhf, the SmolLM2 tokenizer or hf-configs not found under the shared data folder: SFT chat-template tests skipped');
const maybe = hh && smolTok && smolCfg ? test : test.skip;

/** SmolLM2-135M-Instruct's config.json with the sizes scaled down (vocabulary and token ids kept). */
const SMOL_TINY: LlamaConfig = {
  vocabSize: 49152, hiddenSize: 24, intermediateSize: 32, numLayers: 1, numHeads: 3, numKvHeads: 1,
  rmsNormEps: 1e-5, ropeTheta: 100000, tieWordEmbeddings: true, maxPositionEmbeddings: 8192,
  bosTokenId: 1, eosTokenId: 2, padTokenId: 2,
};

/** A SmolLM2-shaped random model folder with SmolLM2's tokenizer files. */
async function smolFolder(dir: string): Promise<string> {
  const src = join(dir, 'src');
  mkdirSync(src, { recursive: true });
  copyFileSync(smolTok!, join(src, 'tokenizer.json'));
  copyFileSync(smolCfg!, join(src, 'tokenizer_config.json'));
  const tok = await Tokenizer.fromFile(join(src, 'tokenizer.json'), SMOL_TINY);
  const model = LlamaModel.random(SMOL_TINY, new Rng('smol-tiny'));
  const out = join(dir, 'model');
  await saveHfFolder(out, model, tok);
  model.dispose();
  return out;
}

/** The text of the last "\n\nAssistant:" turn of an HH dialogue, trimmed (plain string search). */
function lastAssistantTurn(text: string): string {
  return text.slice(text.lastIndexOf('\n\nAssistant:') + '\n\nAssistant:'.length).trim();
}
/** The text of the last "\n\nHuman:" turn, trimmed. */
function lastHumanTurn(text: string): string {
  const h = text.lastIndexOf('\n\nHuman:') + '\n\nHuman:'.length;
  return text.slice(h, text.indexOf('\n\nAssistant:', h)).trim();
}

let folder: string;
test.before(async () => {
  if (hh && smolTok && smolCfg) folder = await smolFolder(tmp('chat'));
});

maybe('auto on HH-RLHF with a SmolLM2-shaped model: the loss covers exactly the final assistant turn and its <|im_end|>', async (t) => {
  const tok = await Tokenizer.fromFile(folder);
  const format = dialogueFormatFor('auto', tok);
  t.truthy(format.template, 'the saved folder keeps SmolLM2 chat template');
  const rows = gunzipRows(hh!, 40);
  const items = (await readSftExamples(hh!)).slice(0, 40);
  const { examples, kept } = tokenizeExamples(tok, formatExamples(tok, items, format), 4096);
  t.true(examples.length >= 35);
  const batch = padBatch(examples.slice(0, 4), tok.padId);
  examples.forEach((ex, i) => {
    const chosen = items[kept[i]!]!;
    const text = rows.find((r) => r.startsWith(chosen.prompt) && r.slice(chosen.prompt.length) === chosen.response)!;
    t.truthy(text);
    const masked = ex.ids.slice(ex.promptLength);
    t.is(tok.decode(masked), `${lastAssistantTurn(text)}<|im_end|>`);
    const unmasked = tok.decode(ex.ids.slice(0, ex.promptLength));
    t.true(unmasked.startsWith('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n'));
    t.true(unmasked.endsWith(`<|im_start|>user\n${lastHumanTurn(text)}<|im_end|>\n<|im_start|>assistant\n`));
    // every Human/Assistant turn is there, as a ChatML turn
    const turns = (text.match(/\n\n(Human|Assistant):/g) ?? []).length;
    t.is((unmasked.match(/<\|im_start\|>(user|assistant)\n/g) ?? []).length, turns);
    t.is(ex.ids[0], tok.tokenToId('<|im_start|>')); // no BOS added: SmolLM2 adds none and the template writes <|im_start|>
    t.is(ex.ids[ex.ids.length - 1], tok.tokenToId('<|im_end|>')); // the turn's own end, no EOS appended after it
  });
  // the padded batch's loss mask is the same set of tokens
  for (let b = 0; b < 4; b++) {
    const ex = examples[b]!;
    const row = Array.from(batch.lossMask.subarray(b * batch.length, b * batch.length + ex.ids.length));
    t.deepEqual(row, ex.ids.map((_, j) => (j >= ex.promptLength ? 1 : 0)));
  }
});

maybe("chatTemplate 'hh' on the same model: the old layout (BOS + HH prompt, loss on the response and EOS)", async (t) => {
  const tok = await Tokenizer.fromFile(folder);
  const items = (await readSftExamples(hh!)).slice(0, 5);
  const { examples } = tokenizeExamples(tok, formatExamples(tok, items, dialogueFormatFor('hh', tok)), 4096);
  examples.forEach((ex, i) => {
    t.is(ex.ids[0], tok.bosId);
    t.is(ex.ids[ex.ids.length - 1], tok.eosId);
    t.is(tok.decode(ex.ids.slice(1, ex.promptLength)), items[i]!.prompt);
    t.is(tok.decode(ex.ids.slice(ex.promptLength, -1)), items[i]!.response);
  });
});

maybe('runSft with chatTemplate auto trains a SmolLM2-shaped model; its samples are prompted in ChatML', async (t) => {
  const d = tmp('chat-run');
  const data = writeJsonl(join(d, 'data.jsonl'), hhRows(6));
  const res = await runSft(tinyConfig({ model: folder, data, out: join(d, 'run'), maxSteps: 1, microBatchSize: 2, gradAccumSteps: 1, maxLength: 128, sampleMaxTokens: 3, evalEvery: 0, checkpointEvery: 0 }), { quiet: true });
  t.is(res.steps, 1);
  t.true(Number.isFinite(res.evalLossAfter!));
  t.is(res.samples.length, 1);
  t.true(res.samples[0]!.prompt.endsWith('<|im_start|>assistant\n'));
  t.regex(res.samples[0]!.reference, /^\w+ are nice\.$/);
  const saved = JSON.parse(readFileSync(join(res.outDir, 'config.json'), 'utf8')) as { chatTemplate: string };
  t.is(saved.chatTemplate, 'auto');
});

/** The first n `chosen` texts of a .jsonl.gz, read with node:zlib (independent of qrlhf's reader). */
function gunzipRows(path: string, n: number): string[] {
  return gunzipSync(readFileSync(path)).toString('utf8').split('\n').filter((l) => l.trim()).slice(0, n + 10)
    .map((l) => (JSON.parse(l) as { chosen: string }).chosen);
}

/**
 * The shipped stories260K model (a real pretrained Llama, llama2.c format) must write llama2.c's own
 * reference output under greedy decoding (MANIFEST.md), also when its prompt is left-padded in a
 * batch with longer ones.
 */
import anyTest, { type TestFn } from 'ava';
import { Llama2cTokenizer, LlamaModel, Rng, generate, readLlama2c, sharedDataFile } from '@qrlhf/core';

const bin = sharedDataFile('models/stories260K/stories260K.bin');
const tokPath = sharedDataFile('models/stories260K/tok512.bin');
const maybe: TestFn = bin && tokPath ? anyTest : (anyTest.skip as unknown as TestFn);
const EXPECTED = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';

const absent = maybe === anyTest ? '' : ' (skipped: ../shared/data/models/stories260K is absent)';

maybe(`stories260K: greedy decoding from BOS reproduces llama2.c, alone and in a left-padded batch${absent}`, async (t) => {
  const { config, tensors } = readLlama2c(bin!);
  const model = LlamaModel.fromTensors(config, tensors);
  const tok = Llama2cTokenizer.read(tokPath!);
  const head = tok.encode('Once upon a time,');
  const BOS = config.bosTokenId;
  const n = 36;
  const out = await generate(model, [[BOS], [BOS, ...head]], { maxNewTokens: n, temperature: 0, eosTokenId: [], rng: new Rng(0) });
  const alone = tok.decode(out.tokens[0]!).trimStart();
  t.true(alone.startsWith(EXPECTED), alone);
  // The second row's prompt is longer, so the first row was left-padded; the second continues the text.
  const cont = tok.decode([...head, ...out.tokens[1]!]).trimStart();
  t.true(cont.startsWith(EXPECTED), cont);
  const single = await generate(model, [[BOS]], { maxNewTokens: n, temperature: 0, eosTokenId: [], rng: new Rng(0) });
  t.deepEqual(single.tokens[0], out.tokens[0]);
  model.dispose();
});

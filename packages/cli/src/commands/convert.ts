import type { Argv, CommandModule } from 'yargs';
import { QrlhfError, initBackend, loadModel, saveHfFolder } from '@qrlhf/core';
import { handle } from '../run.js';
import { existingPath, optionalString, requiredString } from './generate.js';

const DTYPES = ['F32', 'F16', 'BF16'] as const;

export const convertCommand: CommandModule = {
  command: 'convert',
  describe: 'Convert a llama2.c checkpoint (or re-save a model folder) as a Hugging Face folder: config.json, model.safetensors, tokenizer.json',
  builder: (y: Argv) =>
    y
      .option('model', { type: 'string', describe: 'llama2.c checkpoint .bin (or a Hugging Face folder) (required)' })
      .option('tokenizer', { type: 'string', describe: 'llama2.c tokenizer .bin or tokenizer.json (default: beside the model)' })
      .option('out', { type: 'string', describe: 'Output folder; replaced if it is a model folder, refused if it holds anything else (required)' })
      .option('dtype', { type: 'string', describe: 'Weight type in model.safetensors: F32 | F16 | BF16 (default F32)' }),
  handler: handle(async (a: Record<string, unknown>) => {
    const modelPath = requiredString('model', a['model'], 'the llama2.c checkpoint to convert');
    const out = requiredString('out', a['out'], 'the folder to write');
    const tokenizerPath = optionalString('tokenizer', a['tokenizer']);
    const dtype = optionalString('dtype', a['dtype'])?.toUpperCase() ?? 'F32';
    if (!(DTYPES as readonly string[]).includes(dtype)) {
      throw new QrlhfError(`--dtype: expected one of ${DTYPES.join(', ')}, got ${JSON.stringify(a['dtype'])}`);
    }
    existingPath('model', modelPath);
    existingPath('tokenizer', tokenizerPath);
    // Nothing heavy is computed; any backend holds the tensors. Quiet: stderr is for the result.
    await initBackend('auto', { quiet: true });
    const { model, tokenizer } = await loadModel(modelPath, tokenizerPath === undefined ? {} : { tokenizer: tokenizerPath });
    try {
      await saveHfFolder(out, model, tokenizer, { dtype: dtype as (typeof DTYPES)[number] });
    } finally {
      model.dispose();
    }
    const c = model.config;
    process.stderr.write(
      `qrlhf: wrote ${out} (${c.numLayers} layers, d=${c.hiddenSize}, vocab ${c.vocabSize}, ${dtype}; tokenizer ${tokenizer.vocabSize} tokens)\n`,
    );
  }),
};

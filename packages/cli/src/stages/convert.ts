/** `qrlhf convert`: a llama2.c checkpoint (or a model folder) written as a Hugging Face folder. */
import { MODEL_FIELDS, defineConfig, initBackend, loadModel, requireKeys, saveHfFolder, type ConfigOf } from '@qrlhf/core';
import { mustExist } from './generate.js';

export const CONVERT_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'llama2.c checkpoint .bin (or a Hugging Face folder) (required)' },
  ...MODEL_FIELDS,
  out: { type: 'string', default: null, nullable: true, path: true, doc: 'output folder; replaced if it is a model folder, refused if it holds anything else (required)' },
  dtype: { type: 'string', default: 'F32', choices: ['F32', 'F16', 'BF16'], doc: 'weight type in model.safetensors' },
});
export type ConvertConfig = ConfigOf<typeof CONVERT_SCHEMA>;

export async function runConvert(config: ConvertConfig): Promise<void> {
  const cfg = requireKeys(config, ['model', 'out'], 'convert');
  mustExist(cfg, ['model', 'tokenizer']);
  // Nothing heavy is computed; any backend holds the tensors. Quiet: stderr is for the result.
  await initBackend('auto', { quiet: true });
  const { model, tokenizer } = await loadModel(cfg.model, cfg.tokenizer === null ? {} : { tokenizer: cfg.tokenizer });
  try {
    await saveHfFolder(cfg.out, model, tokenizer, { dtype: cfg.dtype });
  } finally {
    model.dispose();
  }
  const c = model.config;
  process.stderr.write(
    `qrlhf: wrote ${cfg.out} (${c.numLayers} layers, d=${c.hiddenSize}, vocab ${c.vocabSize}, ${cfg.dtype}; tokenizer ${tokenizer.vocabSize} tokens)\n`,
  );
}

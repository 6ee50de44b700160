import { stageCommand } from '../options.js';
import { CONVERT_SCHEMA, runConvert } from '../stages/convert.js';

export const convertCommand = stageCommand({
  command: 'convert',
  describe: 'Convert a llama2.c checkpoint (or re-save a model folder) as a Hugging Face folder: config.json, model.safetensors, tokenizer.json',
  schema: CONVERT_SCHEMA,
  run: runConvert,
});

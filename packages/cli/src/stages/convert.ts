/**
 * `qrlhf convert`: a llama2.c checkpoint (or a model folder, with a LoRA adapter merged in) written
 * as a Hugging Face folder or, with --to gguf, as one GGUF file for llama.cpp runtimes.
 */
import { existsSync } from 'node:fs';
import { MODEL_FIELDS, QrlhfError, defineConfig, initBackend, loadLoraAdapter, loadModel, requireKeys, saveGguf, saveHfFolder, type ConfigOf } from '@qrlhf/core';
import { mustExist } from './generate.js';

export const CONVERT_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'llama2.c checkpoint .bin (or a Hugging Face folder) (required)' },
  ...MODEL_FIELDS,
  adapter: { type: 'string', default: null, nullable: true, path: true, doc: 'a PEFT LoRA adapter folder merged into the model before writing (null = none)' },
  to: { type: 'string', default: 'hf', choices: ['hf', 'gguf'], doc: 'hf: a Hugging Face folder; gguf: one .gguf file (llama.cpp, node-llama-cpp, Ollama)' },
  out: { type: 'string', default: null, nullable: true, path: true, doc: 'output folder (hf; replaced if it is a model folder, refused if it holds anything else) or .gguf file (required)' },
  dtype: { type: 'string', default: 'F32', choices: ['F32', 'F16', 'BF16'], doc: 'weight type: model.safetensors F32 | F16 | BF16; gguf F32 | F16 (norms stay F32)' },
});
export type ConvertConfig = ConfigOf<typeof CONVERT_SCHEMA>;

export async function runConvert(config: ConvertConfig): Promise<void> {
  const cfg = requireKeys(config, ['model', 'out'], 'convert');
  mustExist(cfg, ['model', 'tokenizer']);
  // Nothing heavy is computed; any backend holds the tensors. Quiet: stderr is for the result.
  await initBackend('auto', { quiet: true });
  if (cfg.to === 'gguf' && cfg.dtype === 'BF16') throw new QrlhfError('--dtype BF16: GGUF is written as F32 or F16');
  if (cfg.adapter !== null && !existsSync(cfg.adapter)) throw new QrlhfError(`--adapter ${cfg.adapter}: no such folder`);
  const { model, tokenizer } = await loadModel(cfg.model, cfg.tokenizer === null ? {} : { tokenizer: cfg.tokenizer });
  try {
    if (cfg.adapter !== null) {
      loadLoraAdapter(cfg.adapter, model);
      model.mergeLora();
    }
    if (cfg.to === 'gguf') await saveGguf(cfg.out, model, tokenizer, { dtype: cfg.dtype as 'F32' | 'F16' });
    else await saveHfFolder(cfg.out, model, tokenizer, { dtype: cfg.dtype });
  } finally {
    model.dispose();
  }
  const c = model.config;
  process.stderr.write(
    `qrlhf: wrote ${cfg.out} (${cfg.to === 'gguf' ? 'GGUF, ' : ''}${cfg.adapter !== null ? 'adapter merged, ' : ''}${c.numLayers} layers, d=${c.hiddenSize}, vocab ${c.vocabSize}, ${cfg.dtype}; tokenizer ${tokenizer.vocabSize} tokens)\n`,
  );
}

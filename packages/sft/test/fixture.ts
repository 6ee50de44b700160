/**
 * Tiny fixtures for the SFT tests: a character-level tokenizer.json, a random Llama of a few
 * thousand parameters saved as a Hugging Face folder, and a handful of dialogues.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Rng, Tokenizer, llamaWeightShapes, saveHfFolder, type LlamaConfig } from '@qrlhf/core';
import type { SftConfig } from '../src/config.js';
import { sftDefaults } from '../src/config.js';

/** A BPE tokenizer.json without merges: one token per character (printable ASCII and newline). */
export function charTokenizerJson(): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const chars = ['\n', ...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i))];
  for (const c of chars) vocab[c] = Object.keys(vocab).length;
  return {
    version: '1.0',
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Fuse' },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
}

export const TINY: LlamaConfig = {
  vocabSize: 99, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1,
  rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 256, bosTokenId: 1, eosTokenId: 2,
};

export function tmp(label: string): string {
  return mkdtempSync(join(tmpdir(), `qrlhf-sft-${label}-`));
}

/** A random tiny model with the char tokenizer, saved as a Hugging Face folder in `dir`. */
export async function writeTinyModel(dir: string, seed = 1): Promise<string> {
  const tok = Tokenizer.fromJSON(charTokenizerJson(), { config: TINY });
  // Weights drawn here rather than by LlamaModel.random (std 0.02): with a tied embedding that
  // small, logits stay within about ±0.3 and no adapter could fit the data; std 1 embeddings and
  // 1/sqrt(fan-in) linear layers give a model whose output a LoRA can actually move.
  const rng = new Rng(`tiny-model:${seed}`);
  const tensors: Record<string, tf.Tensor> = {};
  for (const [name, shape] of Object.entries(llamaWeightShapes(TINY))) {
    const n = shape.reduce((a, b) => a * b, 1);
    const std = name.endsWith('norm.weight') ? 0 : name.includes('embed') ? 1 : 1 / Math.sqrt(shape[1]!);
    tensors[name] = tf.tensor(Float32Array.from({ length: n }, () => (std === 0 ? 1 : std * rng.normal())), shape);
  }
  const model = LlamaModel.fromTensors(TINY, tensors);
  await saveHfFolder(dir, model, tok);
  model.dispose();
  return dir;
}

const TOPICS = ['cats', 'tea', 'rain', 'maps', 'bees', 'jazz', 'kites', 'salt', 'moss', 'ink', 'owls', 'figs'];

/** n short HH-style {chosen, rejected} rows whose responses follow a learnable pattern. */
export function hhRows(n: number): { chosen: string; rejected: string }[] {
  return Array.from({ length: n }, (_, i) => {
    const t = TOPICS[i % TOPICS.length]!;
    const prompt = `\n\nHuman: tell me about ${t}\n\nAssistant:`;
    return { chosen: `${prompt} ${t} are nice.`, rejected: `${prompt} no.` };
  });
}

export function writeJsonl(path: string, rows: unknown[]): string {
  writeFileSync(path, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return path;
}

/** A complete small config for the tiny fixtures. */
export function tinyConfig(over: Partial<SftConfig> & Pick<SftConfig, 'model' | 'data' | 'out'>): SftConfig {
  return {
    ...sftDefaults(),
    backend: 'cpu',
    loraR: 4,
    loraAlpha: 8,
    loraDropout: 0,
    maxLength: 64,
    heldOutFraction: 0.25,
    lr: 1e-2,
    warmupSteps: 2,
    microBatchSize: 2,
    gradAccumSteps: 2,
    maxSteps: 6,
    evalEvery: 3,
    checkpointEvery: 2,
    logEvery: 1,
    samples: 1,
    sampleMaxTokens: 8,
    ...over,
  };
}

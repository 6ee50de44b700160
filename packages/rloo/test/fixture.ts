/**
 * Tiny fixtures for the RLOO tests: a character tokenizer over a small alphabet, random tiny Llama
 * policies (saved as Hugging Face folders), prompt files and stub reward sources.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Rng, Tokenizer, llamaWeightShapes, saveHfFolder, type LlamaConfig } from '@qrlhf/core';
import { GateNetwork, QuantileRewardModel, taus as makeTaus } from '@qrlhf/qrm';
import { functionRewardSource, rlooDefaults, type RewardSource, type RlooConfig } from '../src/index.js';

export const CHARS = ['\n', ' ', ':', '.', '?', 'H', 'A', ...'abcdefghijklmnopqrstuvwxyz'];

/** A BPE tokenizer.json without merges: <unk> <s> </s>, then one token per character of `chars`. */
export function charTokenizerJson(chars: readonly string[] = CHARS): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (const c of chars) vocab[c] = Object.keys(vocab).length;
  return {
    version: '1.0',
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Fuse' },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
}

export function tinyConfig(vocabSize = 3 + CHARS.length): LlamaConfig {
  return {
    vocabSize, hiddenSize: 16, intermediateSize: 32, numLayers: 2, numHeads: 2, numKvHeads: 1,
    rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 64, bosTokenId: 1, eosTokenId: 2,
  };
}

export function tokenizerFor(chars: readonly string[] = CHARS): Tokenizer {
  return Tokenizer.fromJSON(charTokenizerJson(chars), { config: tinyConfig(3 + chars.length) });
}

export function tmp(label: string): string {
  return mkdtempSync(join(tmpdir(), `qrlhf-rloo-${label}-`));
}

/**
 * A random Llama whose weights have standard deviation `std` (LlamaModel.random uses 0.02, which
 * makes every next-token distribution nearly uniform; a larger scale gives the policy room to
 * become decisive), from our own seeded draws.
 */
export function scaledRandomModel(config: LlamaConfig, seed: number, std: number): LlamaModel {
  const rng = new Rng(`model:${seed}`);
  const tensors: Record<string, tf.Tensor> = {};
  for (const [name, shape] of Object.entries(llamaWeightShapes(config))) {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = new Float32Array(n);
    if (name.endsWith('norm.weight')) a.fill(1);
    else for (let i = 0; i < n; i++) a[i] = rng.normal() * (name === 'model.embed_tokens.weight' ? std : std / 2);
    tensors[name] = tf.tensor(a, shape);
  }
  return LlamaModel.fromTensors(config, tensors);
}

/** A tiny random policy with the char tokenizer, saved as a Hugging Face folder. */
export async function writeTinyPolicy(dir: string, seed = 1): Promise<string> {
  const model = scaledRandomModel(tinyConfig(), seed, 0.5);
  await saveHfFolder(dir, model, tokenizerFor());
  model.dispose();
  return dir;
}

const WORDS = ['cats', 'tea', 'rain', 'maps', 'bees', 'jazz', 'kites', 'salt', 'moss', 'ink', 'owls', 'figs'];

/** n {prompt} rows in HH form, plus (if asked) some HH {chosen, rejected} rows and one too-long prompt. */
export function writePrompts(path: string, n: number, opts: { hh?: number; long?: number } = {}): string {
  const rows: object[] = [];
  for (let i = 0; i < n; i++) rows.push({ prompt: `\n\nHuman: tell me of ${WORDS[i % WORDS.length]}?\n\nAssistant:` });
  for (let i = 0; i < (opts.hh ?? 0); i++) {
    const p = `\n\nHuman: why ${WORDS[i % WORDS.length]}?\n\nAssistant:`;
    rows.push({ chosen: `${p} good.`, rejected: `${p} bad.` });
  }
  for (let i = 0; i < (opts.long ?? 0); i++) rows.push({ prompt: `\n\nHuman: ${'la '.repeat(30)}?\n\nAssistant:` });
  writeFileSync(path, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return path;
}

export const TAUS = Array.from({ length: 9 }, (_, i) => (i + 1) / 10);

/**
 * A stub reward source: the distribution of a response's reward is uniform on
 * [m - w, m + w] with m = share of 'a' and 'e' among its characters and w = 0.2 + share of 'z'.
 */
export function stubQuantiles(response: string): number[] {
  const n = Math.max(1, response.length);
  const count = (re: RegExp) => (response.match(re) ?? []).length;
  const m = count(/[ae]/g) / n;
  const w = 0.2 + count(/z/g) / n;
  return TAUS.map((t) => m - w + 2 * w * t);
}

export function stubReward(): RewardSource {
  return functionRewardSource(TAUS, ({ response }) => stubQuantiles(response));
}

/** A complete small RLOO config for the tiny fixtures. */
export function smallConfig(over: Partial<RlooConfig> & Pick<RlooConfig, 'policy' | 'prompts' | 'out'>): RlooConfig {
  return {
    ...rlooDefaults(),
    backend: 'cpu',
    loraR: 4,
    loraAlpha: 8,
    loraTargets: ['q_proj', 'v_proj'],
    batchSize: 3,
    k: 2,
    steps: 4,
    lr: 1e-2,
    maxNewTokens: 6,
    maxPromptLength: 50,
    microBatchSize: 4,
    generationBatchSize: 4,
    sampleEvery: 2,
    samplesPerLog: 2,
    checkpointEvery: 2,
    ...over,
  };
}

/**
 * A random quantile reward model folder over `backbone` (the tiny policy, d = 16): two attributes
 * (helpfulness, harmlessness), K levels, heads and a one-hidden-layer gate drawn from Rng(seed),
 * no debiasing. Returns the folder.
 */
export async function writeRandomQrm(out: string, backbone: string, o: { K: number; seed: number }): Promise<string> {
  const { K } = o;
  const rng = new Rng(o.seed);
  const d = 16;
  const M = 2;
  const heads = {
    weight: Float32Array.from({ length: M * K * d }, () => 0.3 * rng.normal()),
    bias: Float32Array.from({ length: M * K }, (_, i) => 0.05 * (i % K)),
    taus: makeTaus(K),
    attributes: ['helpfulness', 'harmlessness'],
    d,
  };
  const gate = GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: 8, numHidden: 1 }, rng);
  const qrm = new QuantileRewardModel({ heads, gate, verbosity: null, debiasPenalties: [0, 0], backbone });
  await qrm.save(out);
  qrm.dispose();
  return out;
}

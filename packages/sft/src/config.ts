/**
 * The SFT configuration (CleanRL style): every key with its type, default and a one-line doc, in
 * one table. A config file is a JSON object with any subset of these keys; an unknown or mistyped
 * key is refused with the file and the key named. A run folder's config.json holds the resolved
 * values, so the run can be reproduced from it.
 *
 * Relative paths (model, tokenizer, data, out) in a config FILE are resolved against the folder of
 * that file; paths given as command-line flags, against the working directory. Built on
 * @qrlhf/core's defineConfig / loadConfigFile / applyOverrides.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import {
  BACKEND_NAMES, CHAT_TEMPLATE_FIELD, QrlhfError, applyOverrides, isChatTemplatePath, defaultConfig, defineConfig, loadConfigFile, requireKeys, type ConfigOf,
} from '@qrlhf/core';

export const LORA_TARGET_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export const BACKENDS = BACKEND_NAMES;

/** Every SFT setting: type, default, one-line doc (JSON keys are these camelCase names; flags may be kebab-case). */
export const SFT_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, doc: 'base model: a Hugging Face folder or a llama2.c .bin checkpoint (required)' },
  tokenizer: { type: 'string', default: null, nullable: true, doc: 'tokenizer file or folder (null = the one inside / beside the model)' },
  data: { type: 'string', default: null, nullable: true, doc: 'training data: HH-RLHF {chosen, rejected} or {prompt, response} rows, .jsonl or .jsonl.gz (required)' },
  chatTemplate: CHAT_TEMPLATE_FIELD,
  out: { type: 'string', default: 'runs/sft', doc: 'run folder: config.json, metrics.jsonl, checkpoints/, adapter/, merged/' },
  seed: { type: 'int', default: 0, min: 0, doc: 'seed of every random draw: LoRA init, held-out split, shuffling, dropout' },
  backend: { type: 'string', default: 'auto', choices: BACKEND_NAMES, doc: 'tfjs backend: auto picks tensorflow-gpu > tensorflow > wasm > cpu' },
  resume: { type: 'boolean', default: false, doc: "continue from the run folder's last checkpoint (a fresh start when there is none)" },

  loraR: { type: 'int', default: 32, min: 1, doc: 'LoRA rank r' },
  loraAlpha: { type: 'number', default: 64, min: 0, doc: 'LoRA alpha: the update is scaled by alpha / r' },
  loraDropout: { type: 'number', default: 0.05, min: 0, max: 0.99, doc: "dropout on the LoRA branch's input, in training only" },
  loraTargets: {
    type: 'string[]', default: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], choices: [...LORA_TARGET_NAMES, 'all-linear'],
    doc: 'adapted layers: some of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or ["all-linear"]',
  },

  maxLength: { type: 'int', default: 1024, min: 2, doc: 'examples longer than this (BOS + prompt + response + EOS tokens) are filtered out, not truncated' },
  maxExamples: { type: 'int', default: 0, min: 0, doc: 'read at most this many rows of the data file, in file order (0 = all)' },
  heldOutFraction: { type: 'number', default: 0.05, min: 0, max: 0.9, doc: 'share of the examples held out for evaluation' },
  maxEvalExamples: { type: 'int', default: 0, min: 0, doc: 'evaluate on at most this many held-out examples (0 = all)' },

  lr: { type: 'number', default: 3e-4, min: 0, doc: 'peak learning rate of AdamW' },
  warmupSteps: { type: 'int', default: 0, min: 0, doc: 'linear warmup to lr over this many optimiser steps' },
  schedule: { type: 'string', default: 'cosine', choices: ['cosine', 'constant'], doc: 'after warmup: "cosine" decays to minLr at the last step, "constant" keeps lr' },
  minLr: { type: 'number', default: 0, min: 0, doc: 'floor of the cosine decay' },
  weightDecay: { type: 'number', default: 0, min: 0, doc: "AdamW's decoupled weight decay" },
  beta1: { type: 'number', default: 0.9, min: 0, max: 0.999999, doc: 'AdamW beta1' },
  beta2: { type: 'number', default: 0.999, min: 0, max: 0.999999, doc: 'AdamW beta2' },
  gradClip: { type: 'number', default: 1, min: 0, doc: 'clip the global gradient norm to this (0 = no clipping)' },
  microBatchSize: { type: 'int', default: 8, min: 1, doc: 'sequences per forward/backward pass' },
  gradAccumSteps: { type: 'int', default: 1, min: 1, doc: 'micro-batches summed per optimiser step: effective batch = microBatchSize x gradAccumSteps' },
  maxSteps: { type: 'int', default: 0, min: 0, doc: 'optimiser steps to run (0 = as many as `epochs` takes)' },
  epochs: { type: 'number', default: 1, min: 0, doc: 'passes over the training split when maxSteps is 0 (may be fractional)' },

  evalEvery: { type: 'int', default: 50, min: 0, doc: 'evaluate on the held-out split every N steps, besides step 0 and the last (0 = only those)' },
  checkpointEvery: { type: 'int', default: 50, min: 0, doc: 'write a checkpoint every N steps, besides the last (0 = only the last)' },
  logEvery: { type: 'int', default: 1, min: 1, doc: 'log training metrics every N steps' },
  samples: { type: 'int', default: 3, min: 0, doc: 'after training: greedy generations of the merged model for this many held-out prompts (samples.jsonl)' },
  sampleMaxTokens: { type: 'int', default: 64, min: 0, doc: 'maximum new tokens of each sample' },
  wandbProject: { type: 'string', default: null, nullable: true, doc: 'Weights & Biases project (null = off; also needs WANDB_API_KEY)' },
});

/** The SFT configuration: see SFT_SCHEMA for each key's type, default and doc. */
export type SftConfig = ConfigOf<typeof SFT_SCHEMA>;
export type SftConfigKey = keyof SftConfig;

/** The keys holding file paths. */
export const SFT_PATH_KEYS = ['model', 'tokenizer', 'data', 'out'] as const satisfies readonly SftConfigKey[];

/** A fresh copy of the defaults. */
export function sftDefaults(): SftConfig {
  return defaultConfig(SFT_SCHEMA);
}

/** Resolves the relative paths among `keys` of `c` against `base`. */
export function resolveConfigPaths(c: SftConfig, keys: readonly string[], base: string): SftConfig {
  const out = { ...c };
  for (const k of SFT_PATH_KEYS) {
    const v = out[k];
    if (keys.includes(k) && typeof v === 'string' && v !== '' && !isAbsolute(v)) out[k] = resolve(base, v);
  }
  if (keys.includes('chatTemplate') && isChatTemplatePath(out.chatTemplate) && !isAbsolute(out.chatTemplate)) out.chatTemplate = resolve(base, out.chatTemplate);
  return out;
}

/**
 * Reads a config file: defaults, then the file's keys, relative paths resolved against the file's
 * folder. A missing file, bad JSON (FILE:LINE:COL), an unknown or mistyped key throw a QrlhfError
 * naming the file.
 */
export function loadSftConfigFile(path: string): SftConfig {
  const cfg = loadConfigFile(SFT_SCHEMA, path);
  const keys = Object.keys(JSON.parse(readFileSync(path, 'utf8').replace(/^\uFEFF/, '')) as Record<string, unknown>);
  return resolveConfigPaths(cfg, keys, dirname(resolve(path)));
}

/**
 * Applies overrides (command-line flags, camelCase or kebab-case; undefined = not given), checked
 * like a file's keys; relative paths resolved against the working directory.
 */
export function applySftOverrides(base: SftConfig, flags: Record<string, unknown>, source = 'command line'): SftConfig {
  const camel = (s: string) => s.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  const given = Object.entries(flags).filter(([, v]) => v !== undefined).map(([k]) => camel(k));
  return resolveConfigPaths(applyOverrides(SFT_SCHEMA, base, flags, { source, strict: true }), given, process.cwd());
}

/**
 * The config a run uses: defaults < config file (if any) < flags. A library user may also build
 * one by hand: `{ ...sftDefaults(), model, data, out }`.
 */
export function loadSftConfig(file: string | null, flags: Record<string, unknown> = {}): SftConfig {
  return applySftOverrides(file ? loadSftConfigFile(file) : sftDefaults(), flags);
}

/** Checks what the schema cannot say alone: required paths, strict bounds, the all-linear list. */
export function checkSftConfig(cfg: SftConfig, source = 'config'): SftConfig & { model: string; data: string } {
  const c = requireKeys(cfg, ['model', 'data'], source);
  const fail = (key: string, want: string, got: unknown): never => {
    throw new QrlhfError(`${source}: "${key}": expected ${want}, got ${JSON.stringify(got)}`);
  };
  if (!(c.lr > 0)) fail('lr', 'a number > 0', c.lr);
  if (!(c.loraAlpha > 0)) fail('loraAlpha', 'a number > 0', c.loraAlpha);
  if (c.minLr > c.lr) fail('minLr', `a number in [0, lr = ${c.lr}]`, c.minLr);
  if (c.maxSteps === 0 && !(c.epochs > 0)) fail('epochs', 'a number > 0 when maxSteps is 0', c.epochs);
  if (c.loraTargets.length === 0) fail('loraTargets', 'a non-empty list', c.loraTargets);
  if (c.loraTargets.includes('all-linear') && c.loraTargets.length > 1) fail('loraTargets', '["all-linear"] alone or a list of module names', c.loraTargets);
  return c;
}

/**
 * The SFT configuration (CleanRL style): every key with its type, default and a one-line doc, in
 * one table (the fields shared with other stages spread in from core). A config file is a JSON
 * object with any subset of these keys; an unknown or mistyped key is refused with the file and the
 * key named. A run folder's config.json holds the resolved values, so the run can be reproduced from it.
 *
 * Relative paths (model, tokenizer, data, out) in a config FILE are resolved against the folder of
 * that file; paths given as command-line flags, against the working directory (core's loadConfig).
 */
import {
  LORA_MODULES, MODEL_FIELDS, QrlhfError, RUN_FIELDS, TRAIN_RUN_FIELDS, applyOverrides, defaultConfig, defineConfig,
  loadConfig, loadConfigFile, outField, parseConfig, requireKeys, seedField, type ConfigOf,
} from '@qrlhf/core';


/** Every SFT setting: type, default, one-line doc (JSON keys are these camelCase names; flags may be kebab-case). */
export const SFT_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'base model: a Hugging Face folder or a llama2.c .bin checkpoint (required)' },
  ...MODEL_FIELDS,
  data: { type: 'string', default: null, nullable: true, path: true, doc: 'training data: HH-RLHF {chosen, rejected} or {prompt, response} rows, .jsonl or .jsonl.gz (required)' },
  out: outField('runs/sft', 'run folder: config.json, metrics.jsonl, checkpoints/, adapter/, merged/'),
  seed: seedField('seed of every random draw: LoRA init, held-out split, shuffling, dropout'),
  ...RUN_FIELDS,
  ...TRAIN_RUN_FIELDS,

  loraR: { type: 'int', default: 32, min: 1, doc: 'LoRA rank r' },
  loraAlpha: { type: 'number', default: 64, min: 0, minExclusive: true, doc: 'LoRA alpha: the update is scaled by alpha / r' },
  loraDropout: { type: 'number', default: 0.05, min: 0, max: 0.99, doc: "dropout on the LoRA branch's input, in training only" },
  loraTargets: {
    type: 'string[]', default: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], choices: [...LORA_MODULES, 'all-linear'],
    doc: 'adapted layers: some of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or ["all-linear"]',
  },

  maxLength: { type: 'int', default: 1024, min: 2, doc: 'examples longer than this (BOS + prompt + response + EOS tokens) are filtered out, not truncated' },
  maxExamples: { type: 'int', default: 0, min: 0, doc: 'read at most this many rows of the data file, in file order (0 = all)' },
  heldOutFraction: { type: 'number', default: 0.05, min: 0, max: 0.9, doc: 'share of the examples held out for evaluation' },
  maxEvalExamples: { type: 'int', default: 0, min: 0, doc: 'evaluate on at most this many held-out examples (0 = all)' },

  lr: { type: 'number', default: 3e-4, min: 0, minExclusive: true, doc: 'peak learning rate of AdamW' },
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
});

/** The SFT configuration: see SFT_SCHEMA for each key's type, default and doc. */
export type SftConfig = ConfigOf<typeof SFT_SCHEMA>;
export type SftConfigKey = keyof SftConfig;

/** A fresh copy of the defaults. */
export function sftDefaults(): SftConfig {
  return defaultConfig(SFT_SCHEMA);
}

/** Reads a config file: defaults, then the file's keys (relative paths against the file's folder). */
export function loadSftConfigFile(path: string): SftConfig {
  return loadConfigFile(SFT_SCHEMA, path);
}

/** Applies overrides (command-line flags, camelCase or kebab-case; undefined = not given; relative paths against the working directory). */
export function applySftOverrides(base: SftConfig, flags: Record<string, unknown>, source = 'command line'): SftConfig {
  return applyOverrides(SFT_SCHEMA, base, flags, { source, strict: true });
}

/**
 * The config a run uses: defaults < config file (if any) < flags. A library user may also build
 * one by hand: `{ ...sftDefaults(), model, data, out }`.
 */
export function loadSftConfig(file: string | null, flags: Record<string, unknown> = {}): SftConfig {
  return loadConfig(SFT_SCHEMA, file, flags);
}

/** Checks what the schema cannot say alone: required paths, strict bounds, the all-linear list. */
export function checkSftConfig(cfg: SftConfig, source = 'config'): SftConfig & { model: string; data: string } {
  const c = requireKeys(parseConfig(SFT_SCHEMA, cfg, source), ['model', 'data'], source);
  const fail = (key: string, want: string, got: unknown): never => {
    throw new QrlhfError(`${source}: "${key}": expected ${want}, got ${JSON.stringify(got)}`);
  };
  if (c.minLr > c.lr) fail('minLr', `a number in [0, lr = ${c.lr}]`, c.minLr);
  if (c.maxSteps === 0 && !(c.epochs > 0)) fail('epochs', 'a number > 0 when maxSteps is 0', c.epochs);
  if (c.loraTargets.length === 0) fail('loraTargets', 'a non-empty list', c.loraTargets);
  if (c.loraTargets.includes('all-linear') && c.loraTargets.length > 1) fail('loraTargets', '["all-linear"] alone or a list of module names', c.loraTargets);
  return c;
}

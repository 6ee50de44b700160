/**
 * The SFT configuration (CleanRL style): every key with its type, default and a one-line doc, in
 * one table. A config file is a JSON object with any subset of these keys; an unknown or mistyped
 * key is refused with the file and the key named. A run folder's config.json holds the resolved
 * values, so the run can be reproduced from it.
 *
 * Relative paths (model, tokenizer, data, out) in a config FILE are resolved against the folder of
 * that file; paths given as command-line flags, against the working directory.
 */
import { readFileSync, existsSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { QrlhfError } from '@qrlhf/core';

type Kind = 'string' | 'path' | 'int' | 'number' | 'bool' | 'targets' | readonly string[];

interface Field<T> {
  kind: Kind;
  default: T;
  doc: string;
  /** Inclusive lower bound for numbers. */
  min?: number;
  /** Exclusive upper bound for numbers. */
  below?: number;
}

const f = <T>(kind: Kind, dflt: T, doc: string, bounds: { min?: number; below?: number } = {}): Field<T> => ({
  kind,
  default: dflt,
  doc,
  ...bounds,
});

export const LORA_TARGET_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export const BACKENDS = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const;

/** Every SFT key: kind, default, one-line doc. */
export const SFT_FIELDS = {
  model: f<string>('path', '', 'base model: a Hugging Face folder or a llama2.c .bin checkpoint'),
  tokenizer: f<string>('path', '', 'tokenizer file or folder ("" = the one inside / beside the model)'),
  data: f<string>('path', '', 'training data: HH-RLHF {chosen, rejected} or {prompt, response} rows, .jsonl or .jsonl.gz'),
  out: f<string>('path', 'runs/sft', 'run folder: config.json, metrics.jsonl, checkpoints/, adapter/, merged/'),
  seed: f<number>('int', 0, 'seed of every random draw: LoRA init, held-out split, shuffling, dropout', { min: 0 }),
  backend: f<(typeof BACKENDS)[number]>(BACKENDS, 'auto', 'tfjs backend: auto picks tensorflow-gpu > tensorflow > wasm > cpu'),
  resume: f<boolean>('bool', false, "continue from the run folder's last checkpoint (a fresh start when there is none)"),

  loraR: f<number>('int', 32, 'LoRA rank r', { min: 1 }),
  loraAlpha: f<number>('number', 64, 'LoRA alpha: the update is scaled by alpha / r', { min: Number.MIN_VALUE }),
  loraDropout: f<number>('number', 0.05, "dropout on the LoRA branch's input, in training only", { min: 0, below: 1 }),
  loraTargets: f<string[] | 'all-linear'>('targets', ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    'adapted layers: a list of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or "all-linear"'),

  maxLength: f<number>('int', 1024, 'examples longer than this (BOS + prompt + response + EOS tokens) are filtered out, not truncated', { min: 2 }),
  maxExamples: f<number>('int', 0, 'read at most this many rows of the data file, in file order (0 = all)', { min: 0 }),
  heldOutFraction: f<number>('number', 0.05, 'share of the examples held out for evaluation', { min: 0, below: 1 }),
  maxEvalExamples: f<number>('int', 0, 'evaluate on at most this many held-out examples (0 = all)', { min: 0 }),

  lr: f<number>('number', 3e-4, 'peak learning rate of AdamW', { min: Number.MIN_VALUE }),
  warmupSteps: f<number>('int', 0, 'linear warmup to lr over this many optimiser steps', { min: 0 }),
  schedule: f<'cosine' | 'constant'>(['cosine', 'constant'], 'cosine', 'after warmup: "cosine" decays to minLr at the last step, "constant" keeps lr'),
  minLr: f<number>('number', 0, 'floor of the cosine decay', { min: 0 }),
  weightDecay: f<number>('number', 0, "AdamW's decoupled weight decay", { min: 0 }),
  beta1: f<number>('number', 0.9, 'AdamW beta1', { min: 0, below: 1 }),
  beta2: f<number>('number', 0.999, 'AdamW beta2', { min: 0, below: 1 }),
  gradClip: f<number>('number', 1, 'clip the global gradient norm to this (0 = no clipping)', { min: 0 }),
  microBatchSize: f<number>('int', 8, 'sequences per forward/backward pass', { min: 1 }),
  gradAccumSteps: f<number>('int', 1, 'micro-batches summed per optimiser step: effective batch = microBatchSize x gradAccumSteps', { min: 1 }),
  maxSteps: f<number>('int', 0, 'optimiser steps to run (0 = as many as `epochs` takes)', { min: 0 }),
  epochs: f<number>('number', 1, 'passes over the training split when maxSteps is 0 (may be fractional)', { min: Number.MIN_VALUE }),

  evalEvery: f<number>('int', 50, 'evaluate on the held-out split every N steps, besides step 0 and the last (0 = only those)', { min: 0 }),
  checkpointEvery: f<number>('int', 50, 'write a checkpoint every N steps, besides the last (0 = only the last)', { min: 0 }),
  logEvery: f<number>('int', 1, 'log training metrics every N steps', { min: 1 }),
  samples: f<number>('int', 3, 'after training: greedy generations of the merged model for this many held-out prompts (samples.jsonl)', { min: 0 }),
  sampleMaxTokens: f<number>('int', 64, 'maximum new tokens of each sample', { min: 0 }),
  wandbProject: f<string>('string', '', 'Weights & Biases project ("" = off; also needs WANDB_API_KEY)'),
} as const;

type Fields = typeof SFT_FIELDS;
/** The SFT configuration: see SFT_FIELDS for each key's default and doc. */
export type SftConfig = { -readonly [K in keyof Fields]: Fields[K] extends Field<infer T> ? T : never };
export type SftConfigKey = keyof SftConfig;

/** A fresh copy of the defaults. */
export function sftDefaults(): SftConfig {
  const out: Record<string, unknown> = {};
  for (const [k, fd] of Object.entries(SFT_FIELDS)) out[k] = structuredClone(fd.default);
  return out as SftConfig;
}

function describe(kind: Kind): string {
  if (Array.isArray(kind)) return `one of ${kind.map((x) => JSON.stringify(x)).join(', ')}`;
  switch (kind) {
    case 'string':
    case 'path':
      return 'a string';
    case 'int':
      return 'an integer';
    case 'number':
      return 'a number';
    case 'bool':
      return 'true or false';
    case 'targets':
      return `"all-linear" or a non-empty list of ${LORA_TARGET_NAMES.join(', ')}`;
  }
  return String(kind);
}

/** Checks one value against its field; returns it (copied) or throws naming `where` and the key. */
function checkValue(key: string, v: unknown, where: string): unknown {
  const fd = (SFT_FIELDS as Record<string, Field<unknown>>)[key]!;
  const bad = (extra = ''): never => {
    throw new QrlhfError(`${where}: "${key}": expected ${describe(fd.kind)}${extra}, got ${JSON.stringify(v)} (${fd.doc})`);
  };
  const kind = fd.kind;
  if (Array.isArray(kind)) {
    if (typeof v !== 'string' || !kind.includes(v)) bad();
    return v;
  }
  switch (kind) {
    case 'string':
    case 'path':
      if (typeof v !== 'string') bad();
      return v;
    case 'bool':
      if (typeof v !== 'boolean') bad();
      return v;
    case 'int':
    case 'number': {
      if (typeof v !== 'number' || !Number.isFinite(v) || (kind === 'int' && !Number.isInteger(v))) bad();
      const n = v as number;
      if (fd.min !== undefined && n < fd.min) bad(fd.min === Number.MIN_VALUE ? ' > 0' : ` >= ${fd.min}`);
      if (fd.below !== undefined && n >= fd.below) bad(` below ${fd.below}`);
      return n;
    }
    case 'targets': {
      if (v === 'all-linear') return v;
      if (!Array.isArray(v) || v.length === 0) bad();
      for (const m of v as unknown[]) {
        if (typeof m !== 'string' || !(LORA_TARGET_NAMES as readonly string[]).includes(m)) bad(` (unknown module ${JSON.stringify(m)})`);
      }
      return [...(v as string[])];
    }
  }
  return bad();
}

/** The closest known key to an unknown one (edit distance at most 3), for "did you mean". */
function suggest(key: string): string | null {
  const norm = (s: string) => s.toLowerCase().replace(/[_-]/g, '');
  let best: string | null = null;
  let bestD = 4;
  for (const k of Object.keys(SFT_FIELDS)) {
    const a = norm(key);
    const b = norm(k);
    const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
    for (let i = 1; i <= a.length; i++) {
      for (let j = 1; j <= b.length; j++) {
        d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      }
    }
    const dist = d[a.length]![b.length]!;
    if (dist < bestD) [best, bestD] = [k, dist];
  }
  return best;
}

/**
 * Validates a partial config object (parsed JSON, or flags) against the table: unknown keys and
 * values of the wrong type or range throw a QrlhfError naming `where` and the key.
 */
export function parseSftConfig(json: unknown, where: string): Partial<SftConfig> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new QrlhfError(`${where}: expected a JSON object of SFT settings, got ${Array.isArray(json) ? 'an array' : JSON.stringify(json)}`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
    if (k === '$schema' || k === '//' || k.startsWith('//')) continue; // comments
    if (!(k in SFT_FIELDS)) {
      const s = suggest(k);
      throw new QrlhfError(`${where}: unknown key "${k}"${s ? ` (did you mean "${s}"?)` : ''}; known keys: ${Object.keys(SFT_FIELDS).join(', ')}`);
    }
    out[k] = checkValue(k, v, where);
  }
  return out as Partial<SftConfig>;
}

const PATH_KEYS = (Object.keys(SFT_FIELDS) as SftConfigKey[]).filter((k) => SFT_FIELDS[k].kind === 'path');

/** Resolves the non-empty relative paths of `c` against `base`. */
export function resolveConfigPaths<T extends Partial<SftConfig>>(c: T, base: string): T {
  const out: Record<string, unknown> = { ...c };
  for (const k of PATH_KEYS) {
    const v = out[k];
    if (typeof v === 'string' && v !== '' && !isAbsolute(v)) out[k] = resolve(base, v);
  }
  return out as T;
}

/**
 * Reads a config file: defaults, then the file's keys (relative paths resolved against the file's
 * folder). A missing file, bad JSON, an unknown or mistyped key throw a QrlhfError naming the file.
 */
export function loadSftConfigFile(path: string): SftConfig {
  if (!existsSync(path)) throw new QrlhfError(`${path}: config file not found`);
  let json: unknown;
  const text = readFileSync(path, 'utf8');
  try {
    json = JSON.parse(text);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const m = /position (\d+)/.exec(msg);
    const line = m ? text.slice(0, Number(m[1])).split('\n').length : null;
    throw new QrlhfError(`${path}${line ? `:${line}` : ''}: not valid JSON (${msg})`);
  }
  return { ...sftDefaults(), ...resolveConfigPaths(parseSftConfig(json, path), dirname(resolve(path))) };
}

/**
 * Applies overrides (command-line flags: only the keys present and not undefined), validated like
 * a file's keys; relative paths resolved against the working directory.
 */
export function applySftOverrides(base: SftConfig, overrides: Record<string, unknown>, where = 'command line'): SftConfig {
  const present = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  return { ...base, ...resolveConfigPaths(parseSftConfig(present, where), process.cwd()) };
}

/**
 * The config a run uses: defaults < config file (if any) < overrides. A library user may also
 * build an SftConfig by hand: `{ ...sftDefaults(), model, data, out }`.
 */
export function loadSftConfig(file: string | null, overrides: Record<string, unknown> = {}): SftConfig {
  const base = file ? loadSftConfigFile(file) : sftDefaults();
  return applySftOverrides(base, overrides);
}

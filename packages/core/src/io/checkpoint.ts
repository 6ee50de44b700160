/**
 * Model checkpoints on disk (SPEC §2): Hugging Face folders (config.json, model.safetensors or
 * shards listed in model.safetensors.index.json, tokenizer.json + tokenizer_config.json) and
 * llama2.c .bin files with their tokenizer beside them. Every name and shape is checked against the
 * config before a tensor is built, and every fault names the file.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import { type LlamaConfig, configFromHf, configToHf } from '../model/config.js';
import { LlamaModel, llamaWeightShapes } from '../model/llama.js';
import { Tokenizer } from '../tokenizer.js';
import { writeDirAtomic, writeFileAtomic } from './atomic.js';
import { readLlama2c } from './llama2c.js';
import { type RawTensor, type SafetensorsFile, hostTensors, openSafetensors, requireFinite, writeSafetensors } from './safetensors.js';
import { type MemoryPlan, checkMemory } from '../model/memory.js';
import { Progress, type ProgressStream } from '../track/console.js';

export interface LoadedModel {
  model: LlamaModel;
  tokenizer: Tokenizer;
  /** What was loaded: the folder or .bin path. */
  source: string;
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new QrlhfError(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new QrlhfError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** Tensors that old or tied checkpoints carry and a Llama model recomputes or shares. */
function ignorable(name: string, config: LlamaConfig): boolean {
  return name.endsWith('.rotary_emb.inv_freq') || (name === 'lm_head.weight' && config.tieWordEmbeddings);
}

/**
 * Checks raw tensors (by name, with the file each came from) against the config's weight list:
 * nothing missing, nothing unknown, every shape right, floating dtypes only.
 */
export function checkLlamaWeights(
  config: LlamaConfig,
  shapes: Record<string, { shape: number[]; dtype: string; file: string }>,
  where: string,
): void {
  const expected = llamaWeightShapes(config);
  for (const [name, shape] of Object.entries(expected)) {
    const got = shapes[name];
    if (!got) {
      throw new QrlhfError(`${where}: missing tensor "${name}" (expected shape [${shape.join(', ')}] for this config)`);
    }
    if (got.shape.length !== shape.length || got.shape.some((d, i) => d !== shape[i])) {
      throw new QrlhfError(`${got.file}: tensor "${name}" has shape [${got.shape.join(', ')}], expected [${shape.join(', ')}] from the config`);
    }
    if (!['F32', 'F16', 'BF16'].includes(got.dtype)) {
      throw new QrlhfError(`${got.file}: tensor "${name}" has dtype ${got.dtype}, expected a floating type (F32, F16, BF16)`);
    }
  }
  for (const [name, got] of Object.entries(shapes)) {
    if (!(name in expected) && !ignorable(name, config)) {
      throw new QrlhfError(`${got.file}: unexpected tensor "${name}": not a weight of a Llama model with this config`);
    }
  }
}

/** A tensor of an HF folder, not read yet: its header entry, the file holding it, and how to read it. */
interface LazyTensor {
  shape: number[];
  dtype: string;
  file: string;
  bytes: number;
  load(): RawTensor;
}

/**
 * Every tensor of an HF folder, from model.safetensors or from the shards its index lists: the
 * headers are read and checked, the data is not (load() reads one tensor). close() the files.
 */
function openHfWeights(dir: string): { tensors: Record<string, LazyTensor>; close(): void } {
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  const out: Record<string, LazyTensor> = {};
  const files: SafetensorsFile[] = [];
  const close = () => {
    for (const f of files) f.close();
  };
  const add = (f: SafetensorsFile, name: string) => {
    const t = f.tensors[name]!;
    const n = t.shape.reduce((x, y) => x * y, 1);
    out[name] = { shape: t.shape, dtype: t.dtype, file: f.path, bytes: n * (t.dtype === 'F16' || t.dtype === 'BF16' ? 2 : t.dtype === 'I64' ? 8 : t.dtype === 'U8' ? 1 : 4), load: () => f.read(name) };
  };
  try {
    if (existsSync(single)) {
      const f = openSafetensors(single);
      files.push(f);
      for (const name of Object.keys(f.tensors)) add(f, name);
      return { tensors: out, close };
    }
    if (!existsSync(index)) {
      const hint = existsSync(join(dir, 'pytorch_model.bin')) ? ' (pytorch_model.bin is not read: convert it to safetensors)' : '';
      throw new QrlhfError(`${dir}: no model.safetensors or model.safetensors.index.json${hint}`);
    }
    const idx = readJson(index);
    const map = (idx as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) {
      throw new QrlhfError(`${index}: "weight_map" is missing (expected an object from tensor name to shard file)`);
    }
    const byShard = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
      if (typeof shard !== 'string' || shard.length === 0 || shard.includes('..') || shard.includes('/') || shard.includes('\\')) {
        throw new QrlhfError(`${index}: "weight_map"."${name}" is ${JSON.stringify(shard)}, expected a shard file name in the folder`);
      }
      if (!byShard.has(shard)) byShard.set(shard, []);
      byShard.get(shard)!.push(name);
    }
    for (const [shard, names] of byShard) {
      const path = join(dir, shard);
      if (!existsSync(path)) throw new QrlhfError(`${index}: shard "${shard}" (holding "${names[0]}") does not exist in ${dir}`);
      const f = openSafetensors(path);
      files.push(f);
      for (const name of names) {
        if (!f.tensors[name]) throw new QrlhfError(`${path}: tensor "${name}" is missing, though ${basename(index)} places it in this shard`);
        add(f, name);
      }
      for (const name of Object.keys(f.tensors)) {
        if (!names.includes(name)) {
          throw new QrlhfError(`${path}: tensor "${name}" is in this shard but ${basename(index)} does not list it here`);
        }
      }
    }
    return { tensors: out, close };
  } catch (e) {
    close();
    throw e;
  }
}

/** The tokenizer file llama2.c keeps beside a checkpoint: tok{vocab}.bin, tokenizer.bin, tok512.bin. */
function llama2cTokenizerBeside(bin: string, vocab: number): string | null {
  const d = dirname(bin);
  for (const name of [`tok${vocab}.bin`, 'tokenizer.bin', 'tok512.bin']) {
    const p = join(d, name);
    if (existsSync(p) && resolve(p) !== resolve(bin)) return p;
  }
  return null;
}

async function loadTokenizer(path: string, config: LlamaConfig, where: string): Promise<Tokenizer> {
  const ids: Partial<LlamaConfig> = { bosTokenId: config.bosTokenId, eosTokenId: config.eosTokenId, padTokenId: config.padTokenId };
  if (config.eosTokenIds) ids.eosTokenIds = config.eosTokenIds;
  const tok = await Tokenizer.fromFile(path, ids);
  if (tok.vocabSize > config.vocabSize) {
    throw new QrlhfError(`${path}: the tokenizer has ${tok.vocabSize} tokens but the model ${where} only ${config.vocabSize}`);
  }
  return tok;
}

/**
 * Loads a model and its tokenizer from a Hugging Face folder (single or sharded safetensors) or a
 * llama2.c checkpoint (.bin; its tokenizer tok{N}.bin / tokenizer.bin beside it, or opts.tokenizer).
 * opts.tokenizer (a tokenizer.json, a folder, or a llama2.c .bin) overrides the one found.
 */
export interface LoadOptions {
  /** A tokenizer.json, a folder, or a llama2.c .bin, instead of the one beside the model. */
  tokenizer?: string;
  /** What the model will run (batch, sequence length, training, LoRA): loading stops with one
   *  line when it will not fit (model/memory.ts). Default: generating one sequence of 512 tokens. */
  memory?: MemoryPlan;
  /** A progress bar while reading the weights: true, false, or a stream; default on stderr for
   *  checkpoints of 256 MiB or more. */
  progress?: boolean | ProgressStream;
}

export async function loadModel(path: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  if (!existsSync(path)) throw new QrlhfError(`${path}: model not found (expected a Hugging Face folder or a llama2.c .bin)`);
  if (opts.tokenizer !== undefined && !existsSync(opts.tokenizer)) throw new QrlhfError(`${opts.tokenizer}: tokenizer not found`);
  if (statSync(path).isDirectory()) return loadHfFolder(path, opts);
  const head = readFileSync(path).subarray(0, 1).toString('latin1');
  if (head === '{' || path.endsWith('.json') || path.endsWith('.safetensors')) {
    throw new QrlhfError(`${path}: give the folder that holds config.json and the weights, not a file in it`);
  }
  const { config, tensors } = readLlama2c(path);
  const tokPath = opts.tokenizer ?? llama2cTokenizerBeside(path, config.vocabSize);
  if (!tokPath) {
    for (const t of Object.values(tensors)) t.dispose();
    throw new QrlhfError(`${path}: no tokenizer beside it (looked for tok${config.vocabSize}.bin, tokenizer.bin, tok512.bin in ${dirname(path)}); give one with --tokenizer`);
  }
  let tokenizer: Tokenizer;
  try {
    tokenizer = await loadTokenizer(tokPath, config, path);
  } catch (e) {
    for (const t of Object.values(tensors)) t.dispose();
    throw e;
  }
  return { model: LlamaModel.fromTensors(config, tensors), tokenizer, source: path };
}

async function loadHfFolder(dir: string, opts: LoadOptions): Promise<LoadedModel> {
  const cfgPath = join(dir, 'config.json');
  if (!existsSync(cfgPath)) {
    const entries = readdirSync(dir).slice(0, 8).join(', ');
    throw new QrlhfError(`${dir}: no config.json (not a Hugging Face model folder; it holds: ${entries || 'nothing'})`);
  }
  const config = configFromHf(readJson(cfgPath), cfgPath);
  const tokPath = opts.tokenizer ?? join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new QrlhfError(`${dir}: no tokenizer.json; give a tokenizer with --tokenizer`);
  const tokenizer = await loadTokenizer(tokPath, config, dir);
  const weights = openHfWeights(dir);
  const tensors: Record<string, tf.Tensor> = {};
  try {
    checkLlamaWeights(config, Object.fromEntries(Object.entries(weights.tensors).map(([k, t]) => [k, { shape: t.shape, dtype: t.dtype, file: t.file }])), dir);
    checkMemory(config, opts.memory ?? defaultPlan(config), dir);
    // One tensor at a time: read its bytes, decode to float32, hand to tfjs; the peak is the
    // float32 model built so far plus one tensor (never a whole shard).
    const names = Object.keys(weights.tensors).filter((n) => !ignorable(n, config));
    const MiB = 1024 * 1024;
    const total = names.reduce((a, n) => a + weights.tensors[n]!.bytes, 0);
    const show = opts.progress ?? total >= 256 * MiB;
    const bar = show ? new Progress(Math.max(1, Math.round(total / MiB)), `loading ${basename(dir)} (MiB)`, typeof show === 'object' ? { stream: show } : {}) : null;
    let done = 0;
    for (const name of names) {
      const t = weights.tensors[name]!;
      const raw = t.load();
      requireFinite(raw.data as Float32Array, t.shape, t.file, name);
      tensors[name] = tf.tensor(raw.data as Float32Array, t.shape, 'float32');
      done += t.bytes;
      bar?.update(Math.round(done / MiB));
    }
    bar?.done();
  } catch (e) {
    for (const t of Object.values(tensors)) t.dispose();
    throw e;
  } finally {
    weights.close();
  }
  return { model: LlamaModel.fromTensors(config, tensors), tokenizer, source: dir };
}

/** What loadModel checks the memory for when not told: generating one sequence of up to 512 tokens. */
function defaultPlan(c: LlamaConfig): MemoryPlan {
  return { batch: 1, seqLen: Math.min(c.maxPositionEmbeddings, 512), training: false };
}

/**
 * Writes a Hugging Face folder — config.json, generation_config.json, model.safetensors,
 * tokenizer.json, tokenizer_config.json — built under a temporary name and swapped in whole.
 * Refuses a model that still carries a LoRA adapter (merge it first), and refuses to replace an
 * existing non-empty folder that is not a model folder.
 */
export async function saveHfFolder(
  dir: string,
  model: LlamaModel,
  tokenizer: Tokenizer,
  opts: { dtype?: 'F32' | 'F16' | 'BF16' } = {},
): Promise<void> {
  if (model.lora) {
    throw new QrlhfError(`${dir}: the model carries a LoRA adapter: merge it (mergeLora) or save it with saveLoraAdapter`);
  }
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) throw new QrlhfError(`${dir}: exists and is not a folder`);
    const entries = readdirSync(dir);
    if (entries.length > 0 && !entries.includes('config.json')) {
      throw new QrlhfError(`${dir}: exists and is not a model folder (no config.json); refusing to replace it`);
    }
  }
  if (tokenizer.vocabSize > model.config.vocabSize) {
    throw new QrlhfError(`${dir}: the tokenizer has ${tokenizer.vocabSize} tokens but the model only ${model.config.vocabSize}`);
  }
  const c = model.config;
  const weights = await hostTensors(model.weights, dir);
  await writeDirAtomic(dir, (tmp) => {
    writeFileAtomic(join(tmp, 'config.json'), `${JSON.stringify(configToHf(c), null, 2)}\n`);
    const gen: Record<string, unknown> = { bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenIds ?? c.eosTokenId };
    if (c.padTokenId !== undefined) gen['pad_token_id'] = c.padTokenId;
    writeFileAtomic(join(tmp, 'generation_config.json'), `${JSON.stringify(gen, null, 2)}\n`);
    writeSafetensors(join(tmp, 'model.safetensors'), weights, { format: 'pt' }, opts.dtype ? { dtype: opts.dtype } : {});
    writeFileAtomic(join(tmp, 'tokenizer.json'), JSON.stringify(tokenizer.toJSON()));
    writeFileAtomic(join(tmp, 'tokenizer_config.json'), `${JSON.stringify(tokenizer.toConfigJSON(), null, 2)}\n`);
  });
}

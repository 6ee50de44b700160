/**
 * Features that say how they were made (issue 13 item 6). Heads fitted on one kind of feature and
 * a gate trained, or a QRM scored, on another give numbers without a word of warning: a 'mean'-
 * pooled head on a 'last'-token feature, a feature cut to 128 tokens read against one cut to 256,
 * another backbone's hidden states. So every feature file records a FeatureProvenance in its
 * metadata (key `provenance`, JSON), `qrm fit` copies it into heads.safetensors, `qrm gate` into
 * qrm.json (`features`), and each consumer compares what it combines:
 *
 *   pooling       'last' | 'mean' (or any later pooling name): compared as a string
 *   maxTokens     the truncation length in force (the model's context when none was given)
 *   backbone      its path (informational) and a fingerprint of its config and of its weights
 *   tokenizer     its path (informational) and a fingerprint of its behaviour
 *   chatTemplate  the setting ('auto' | 'hh' | PATH), the resolved format's name and a fingerprint
 *   engine        'local', or 'openai' and the model's name on the server
 *
 * Fingerprints (sha256, first 16 hex digits), chosen to be cheap on an 8B model and to survive
 * `cp`, `mv`, a symlink or a fresh download (so no mtime and no path in them):
 *   - backbone config: config.json's bytes (absent for a llama2.c file, whose header is in its weights);
 *   - backbone weights: per weights file (*.safetensors, *.bin, *.gguf, *.pt, *.pth, sorted by name)
 *     its name and size and, up to FULL_HASH_BYTES in all, every byte; above that, its first MiB
 *     (a safetensors header names every tensor's dtype, shape and offset) and SAMPLE_BLOCKS blocks
 *     of 4 KiB at evenly spaced offsets (4 MiB read per file, whatever its size). A fine-tune
 *     changes far more than that spacing leaves unsampled; a change confined to one small tensor of
 *     a multi-GiB file could pass, which is the price of not reading 16 GB on every `qrm score`;
 *   - tokenizer: the ids of a fixed probe text (ASCII, digits, accents, CJK, emoji, the HH markers),
 *     the vocabulary size and the special ids: two tokenizers that agree on all of it write the
 *     same ids for the texts that matter, whichever files they came from;
 *   - chat template: 'hh', or the template's Jinja source and its special tokens.
 * Comparisons: the backbone's config and weights are each compared when both sides know them
 * (features computed by an engine from a folder that holds only config.json and the tokenizer
 * record no weights); the engine only between feature files (scoring always runs in process).
 * Files written before this record carry none: they are accepted with one warning line.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, type DialogueFormat } from '@qrlhf/core';

export interface FeatureProvenance {
  pooling: string;
  maxTokens: number;
  backbone: { path: string; config: string | null; weights: string | null };
  tokenizer: { path: string | null; fingerprint: string };
  chatTemplate: { setting: string; name: string; fingerprint: string };
  engine: { kind: string; model?: string };
}

/** Every weights file's bytes are hashed while their total is at most this; above, they are sampled. */
export const FULL_HASH_BYTES = 256 * 2 ** 20;
const HEAD_BYTES = 2 ** 20;
const SAMPLE_BLOCKS = 1024;
const BLOCK = 4096;
const WEIGHTS = /\.(safetensors|bin|gguf|pt|pth)$/i;

const short = (h: ReturnType<typeof createHash>): string => h.digest('hex').slice(0, 16);

function hashFile(h: ReturnType<typeof createHash>, file: string, size: number, full: boolean): void {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(full ? Math.min(size, 8 * 2 ** 20) || 1 : Math.max(HEAD_BYTES, BLOCK));
    const read = (pos: number, len: number): void => {
      let got = 0;
      while (got < len) {
        const r = readSync(fd, buf, got, len - got, pos + got);
        if (r === 0) break;
        got += r;
      }
      h.update(buf.subarray(0, got));
    };
    if (full) {
      for (let pos = 0; pos < size; pos += buf.length) read(pos, Math.min(buf.length, size - pos));
    } else {
      read(0, HEAD_BYTES);
      const step = Math.floor((size - BLOCK) / (SAMPLE_BLOCKS - 1));
      for (let b = 0; b < SAMPLE_BLOCKS; b++) read(b * step, BLOCK);
    }
  } finally {
    closeSync(fd);
  }
}

/** Fingerprints of a backbone's config and weights (a Hugging Face folder, a released QRM folder, or a single model file). */
export function backboneFingerprint(path: string): { config: string | null; weights: string | null } {
  if (!existsSync(path)) throw new QrlhfError(`${path}: backbone not found (no such file or folder)`);
  let files: string[];
  let config: string | null = null;
  if (statSync(path).isDirectory()) {
    const cfg = join(path, 'config.json');
    if (existsSync(cfg)) config = short(createHash('sha256').update(readFileSync(cfg)));
    files = readdirSync(path).filter((f) => WEIGHTS.test(f) && statSync(join(path, f)).isFile()).sort().map((f) => join(path, f));
  } else files = [path];
  if (files.length === 0) return { config, weights: null };
  const sizes = files.map((f) => statSync(f).size);
  const full = sizes.reduce((a, s) => a + s, 0) <= FULL_HASH_BYTES;
  const h = createHash('sha256').update(full ? 'full\n' : 'sampled\n');
  files.forEach((f, i) => {
    h.update(`${f.slice(f.lastIndexOf('/') + 1)}\n${sizes[i]}\n`);
    hashFile(h, f, sizes[i]!, full || sizes[i]! <= HEAD_BYTES + SAMPLE_BLOCKS * BLOCK);
  });
  return { config, weights: short(h) };
}

const PROBE =
  'Human: What is 2 + 2? Naïve café, ümlaut — 東京 🙂\n\nAssistant: It is 4.\tTabs,  spaces   and\r\nCRLF; <s></s> [INST] <|eot_id|> ok';

/** A tokenizer's behavioural fingerprint (see the header). */
export function tokenizerFingerprint(tok: { encode(text: string, o?: { addBos?: boolean }): number[]; vocabSize: number; bosId: number; eosId: number; padId: number }): string {
  const ids = tok.encode(PROBE, { addBos: true });
  return short(createHash('sha256').update(JSON.stringify({ vocab: tok.vocabSize, bos: tok.bosId, eos: tok.eosId, pad: tok.padId, ids })));
}

/** A dialogue format's fingerprint: 'hh', or its template source and special tokens. */
export function formatFingerprint(format: DialogueFormat | undefined): string {
  if (!format?.template) return 'hh';
  return short(createHash('sha256').update(JSON.stringify({ source: format.template.source, special: format.template.specialTokens })));
}

/** The provenance record of features made with these settings. */
export function makeProvenance(o: {
  pooling: string;
  maxTokens: number;
  backbonePath: string;
  tokenizerPath: string | null;
  tokenizer: Parameters<typeof tokenizerFingerprint>[0];
  chatTemplate: string;
  format: DialogueFormat | undefined;
  engine: { kind: string; model?: string };
}): FeatureProvenance {
  return {
    pooling: o.pooling,
    maxTokens: o.maxTokens,
    backbone: { path: o.backbonePath, ...backboneFingerprint(o.backbonePath) },
    tokenizer: { path: o.tokenizerPath, fingerprint: tokenizerFingerprint(o.tokenizer) },
    chatTemplate: { setting: o.chatTemplate, name: o.format?.template ? o.format.name : 'hh', fingerprint: formatFingerprint(o.format) },
    engine: o.engine,
  };
}

/** Reads the `provenance` metadata of a safetensors file: null when absent (an older file). */
export function parseProvenance(metadata: Record<string, string>, where: string): FeatureProvenance | null {
  const raw = metadata['provenance'];
  if (raw === undefined) return null;
  let p: FeatureProvenance;
  try {
    p = JSON.parse(raw) as FeatureProvenance;
  } catch {
    throw new QrlhfError(`${where}: metadata "provenance" is not JSON`);
  }
  checkProvenanceShape(p, `${where}: metadata "provenance"`);
  return p;
}

/** Checks a record read from a file (metadata or qrm.json's `features`). */
export function checkProvenanceShape(p: unknown, where: string): asserts p is FeatureProvenance {
  const o = p as FeatureProvenance;
  const ok =
    o !== null && typeof o === 'object' && typeof o.pooling === 'string' && Number.isInteger(o.maxTokens) &&
    typeof o.backbone === 'object' && o.backbone !== null && typeof o.backbone.path === 'string' &&
    typeof o.tokenizer === 'object' && o.tokenizer !== null && typeof o.tokenizer.fingerprint === 'string' &&
    typeof o.chatTemplate === 'object' && o.chatTemplate !== null && typeof o.chatTemplate.fingerprint === 'string' &&
    typeof o.engine === 'object' && o.engine !== null && typeof o.engine.kind === 'string';
  if (!ok) throw new QrlhfError(`${where}: expected {pooling, maxTokens, backbone: {path, config, weights}, tokenizer: {path, fingerprint}, chatTemplate: {setting, name, fingerprint}, engine: {kind}}`);
}

/** One side of a comparison: what it is ("heads fitted on features"), where it was read, its record. */
export interface ProvenanceSide {
  what: string;
  file: string;
  p: FeatureProvenance;
}

type Field = 'pooling' | 'maxTokens' | 'backbone' | 'tokenizer' | 'chatTemplate' | 'engine';

const FLAG: Record<Field, string> = {
  pooling: '--pooling',
  maxTokens: '--max-tokens',
  backbone: '--model (the backbone)',
  tokenizer: '--tokenizer',
  chatTemplate: '--chat-template',
  engine: '--engine.kind',
};

function differs(f: Field, a: FeatureProvenance, b: FeatureProvenance): boolean {
  switch (f) {
    case 'pooling':
      return a.pooling !== b.pooling;
    case 'maxTokens':
      return a.maxTokens !== b.maxTokens;
    case 'backbone': {
      const both = (x: string | null, y: string | null) => x !== null && y !== null && x !== y;
      return both(a.backbone.config, b.backbone.config) || both(a.backbone.weights, b.backbone.weights);
    }
    case 'tokenizer':
      return a.tokenizer.fingerprint !== b.tokenizer.fingerprint;
    case 'chatTemplate':
      return a.chatTemplate.fingerprint !== b.chatTemplate.fingerprint;
    case 'engine':
      return a.engine.kind !== b.engine.kind || (a.engine.model ?? null) !== (b.engine.model ?? null);
  }
}

function describe(f: Field, p: FeatureProvenance): string {
  switch (f) {
    case 'pooling':
      return `pooled '${p.pooling}'`;
    case 'maxTokens':
      return `cut to ${p.maxTokens} tokens`;
    case 'backbone':
      return `of backbone ${p.backbone.path} (config ${p.backbone.config ?? 'unknown'}, weights ${p.backbone.weights ?? 'unknown'})`;
    case 'tokenizer':
      return `tokenized by ${p.tokenizer.path ?? "the backbone's tokenizer"} (fingerprint ${p.tokenizer.fingerprint})`;
    case 'chatTemplate':
      return `written as ${p.chatTemplate.name === 'hh' ? 'HH text' : `chat template ${p.chatTemplate.name}`} (chatTemplate '${p.chatTemplate.setting}', fingerprint ${p.chatTemplate.fingerprint})`;
    case 'engine':
      return `computed by the ${p.engine.kind} engine${p.engine.model ? ` (model ${p.engine.model})` : ''}`;
  }
}

/**
 * Throws one QrlhfError when two records disagree, naming every field that differs with both
 * values and both files, and the setting that makes them agree. `engine`: compare engines too
 * (between feature files; not when one side is scoring in process).
 */
export function requireSameProvenance(context: string, a: ProvenanceSide, b: ProvenanceSide, o: { engine?: boolean; fix?: string } = {}): void {
  const fields: Field[] = ['pooling', 'maxTokens', 'backbone', 'tokenizer', 'chatTemplate', ...(o.engine === false ? [] : (['engine'] as Field[]))];
  const bad = fields.filter((f) => differs(f, a.p, b.p));
  if (bad.length === 0) return;
  const parts = bad.map((f) => `${a.what} ${describe(f, a.p)} (${a.file}), ${b.what} ${describe(f, b.p)} (${b.file})`);
  throw new QrlhfError(`${context}: ${parts.join('; ')}; ${o.fix ?? 'recompute one of them'} with the same ${bad.map((f) => FLAG[f]).join(', ')}`);
}

/** The one warning line for files that record no provenance (written before it was recorded). */
export function warnUnrecorded(context: string, files: readonly string[]): void {
  if (files.length === 0) return;
  process.stderr.write(
    `qrlhf: warning: ${context}: ${files.join(', ')} ${files.length > 1 ? 'record' : 'records'} no feature provenance (written by an older qrlhf): ` +
      `pooling, max tokens, backbone, tokenizer and chat template are not checked; rerun qrm features to record them\n`,
  );
}

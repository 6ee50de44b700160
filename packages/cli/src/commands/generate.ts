import { existsSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import {
  BACKEND_NAMES, type BackendName, QrlhfError, Rng, type Tokenizer, eosIds, generate, initBackend, loadModel,
} from '@qrlhf/core';
import { handle } from '../run.js';

// ---- flag values: parsed from their text, so a bad one is named as the user typed it ----------

type Raw = unknown;

function one(flag: string, v: Raw): string | undefined {
  if (v === undefined) return undefined;
  if (Array.isArray(v)) throw new QrlhfError(`--${flag}: given ${v.length} times, expected once`);
  return String(v);
}

/** A required string flag (a path, a text). */
export function requiredString(flag: string, v: Raw, what: string): string {
  const s = one(flag, v);
  if (s === undefined || s === '') throw new QrlhfError(`--${flag} is required (${what})`);
  return s;
}

/** A path flag whose file or folder must exist. */
export function existingPath(flag: string, path: string | undefined): void {
  if (path !== undefined && !existsSync(path)) throw new QrlhfError(`--${flag}: ${path} does not exist`);
}

export function optionalString(flag: string, v: Raw): string | undefined {
  return one(flag, v);
}

/** An integer flag within [min, max]; `dflt` when absent. */
export function intFlag(flag: string, v: Raw, o: { min: number; max?: number; dflt?: number }): number | undefined {
  const s = one(flag, v);
  if (s === undefined) return o.dflt;
  const range = o.max === undefined ? `>= ${o.min}` : `in ${o.min}..${o.max}`;
  const x = /^\s*[-+]?\d+\s*$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(x) || x < o.min || (o.max !== undefined && x > o.max)) {
    throw new QrlhfError(`--${flag}: expected an integer ${range}, got ${JSON.stringify(s)}`);
  }
  return x;
}

/** A number flag within [min, max] (open at min when minOpen); `dflt` when absent. */
export function numFlag(flag: string, v: Raw, o: { min: number; max: number; minOpen?: boolean; dflt?: number }): number | undefined {
  const s = one(flag, v);
  if (s === undefined) return o.dflt;
  const x = s.trim() === '' ? NaN : Number(s);
  const ok = Number.isFinite(x) && (o.minOpen ? x > o.min : x >= o.min) && x <= o.max;
  if (!ok) {
    const range = `${o.minOpen ? '(' : '['}${o.min}, ${o.max === Infinity ? 'inf)' : `${o.max}]`}`;
    throw new QrlhfError(`--${flag}: expected a number in ${range}, got ${JSON.stringify(s)}`);
  }
  return x;
}

export function backendFlag(v: Raw): BackendName {
  const s = one('backend', v) ?? 'auto';
  if (!(BACKEND_NAMES as readonly string[]).includes(s)) {
    throw new QrlhfError(`--backend: expected one of ${BACKEND_NAMES.join(', ')}, got ${JSON.stringify(s)}`);
  }
  return s as BackendName;
}

// ---- generate -------------------------------------------------------------------------------

/**
 * The text the new tokens add after the prompt. Decoding them alone would lose what depends on the
 * join (Llama's decoder drops a leading space), so decode prompt + continuation and cut the prompt's
 * text off when it is a prefix.
 */
export function continuationText(tok: Tokenizer, prompt: number[], generated: number[]): string {
  const head = tok.decode(prompt, { skipSpecial: true });
  const all = tok.decode([...prompt, ...generated], { skipSpecial: true });
  return all.startsWith(head) ? all.slice(head.length) : tok.decode(generated, { skipSpecial: true });
}

const DEFAULT_MAX_NEW = 256;

export const generateCommand: CommandModule = {
  command: 'generate',
  describe: 'Continue a prompt (or start from BOS) with a model; prints only the continuation on stdout',
  builder: (y: Argv) =>
    y
      .option('model', { type: 'string', describe: 'Hugging Face model folder or llama2.c .bin (required)' })
      .option('tokenizer', { type: 'string', describe: 'tokenizer.json, folder, or llama2.c tokenizer .bin (default: beside the model)' })
      .option('prompt', { type: 'string', describe: 'Text to continue (default: none, start from BOS)' })
      .option('max-new-tokens', { type: 'string', describe: `New tokens at most, integer >= 0 (default ${DEFAULT_MAX_NEW})` })
      .option('temperature', { type: 'string', describe: 'Sampling temperature >= 0; 0 = greedy (default 0)' })
      .option('top-k', { type: 'string', describe: 'Sample among the k most likely tokens, integer >= 1' })
      .option('top-p', { type: 'string', describe: 'Nucleus sampling: smallest set with probability >= p, in (0, 1]' })
      .option('seed', { type: 'string', describe: 'Random seed, integer >= 0 (default 0)' })
      .option('stop', { type: 'string', array: true, describe: 'Stop when the continuation contains this text, which is cut off (repeatable; e.g. "\\n\\nHuman:")' })
      .option('backend', { type: 'string', describe: `tfjs backend: ${BACKEND_NAMES.join(' | ')} (default auto)` }),
  handler: handle(async (a: Record<string, unknown>) => {
    const modelPath = requiredString('model', a['model'], 'a Hugging Face model folder or a llama2.c .bin');
    const tokenizerPath = optionalString('tokenizer', a['tokenizer']);
    const prompt = optionalString('prompt', a['prompt']) ?? '';
    const maxNew = intFlag('max-new-tokens', a['max-new-tokens'], { min: 0, dflt: DEFAULT_MAX_NEW })!;
    const temperature = numFlag('temperature', a['temperature'], { min: 0, max: Infinity, dflt: 0 })!;
    const topK = intFlag('top-k', a['top-k'], { min: 1 });
    const topP = numFlag('top-p', a['top-p'], { min: 0, max: 1, minOpen: true });
    const seed = intFlag('seed', a['seed'], { min: 0, max: 2 ** 32 - 1, dflt: 0 })!;
    const backend = backendFlag(a['backend']);
    const stops = ((a['stop'] as unknown[] | undefined) ?? []).map((x) => unescapeFlag(String(x)));
    if (stops.some((x) => x === '')) throw new QrlhfError('--stop: expected a non-empty text');
    existingPath('model', modelPath);
    existingPath('tokenizer', tokenizerPath);

    await initBackend(backend);
    const { model, tokenizer } = await loadModel(modelPath, tokenizerPath === undefined ? {} : { tokenizer: tokenizerPath });
    try {
      const ids = prompt === '' ? [tokenizer.bosId] : tokenizer.encode(prompt, { addBos: tokenizer.defaultAddBos });
      const room = model.config.maxPositionEmbeddings - ids.length;
      if (room <= 0) {
        throw new QrlhfError(`--prompt: ${ids.length} tokens fill the model's context of ${model.config.maxPositionEmbeddings} positions`);
      }
      let steps = maxNew;
      if (steps > room) {
        process.stderr.write(`qrlhf: --max-new-tokens ${maxNew} lowered to ${room}: the context holds ${model.config.maxPositionEmbeddings} positions\n`);
        steps = room;
      }
      // On a terminal, show the text as it comes; into a pipe, write it once at the end.
      const live = process.stdout.isTTY === true;
      let shown = '';
      const show = (gen: number[], final: boolean) => {
        let text = cutAtStop(continuationText(tokenizer, ids, gen), stops);
        if (!final && text.endsWith('\ufffd')) text = text.slice(0, -1); // a character still arriving in bytes
        if (text.startsWith(shown) && text.length > shown.length) {
          process.stdout.write(text.slice(shown.length));
          shown = text;
        }
      };
      const t0 = performance.now();
      const result = generate(model, [ids], {
        maxNewTokens: steps,
        temperature,
        ...(topK !== undefined ? { topK } : {}),
        ...(topP !== undefined ? { topP } : {}),
        eosTokenId: eosIds(model.config, tokenizer.eosId),
        rng: new Rng(seed),
        ...(live || stops.length
          ? {
              stop: (gen: number[]) => {
                if (live) show(gen, false);
                return stops.length > 0 && cutAtStop(continuationText(tokenizer, ids, gen), stops) !== continuationText(tokenizer, ids, gen);
              },
            }
          : {}),
      });
      const secs = (performance.now() - t0) / 1000;
      const gen = result.tokens[0]!;
      const text = cutAtStop(continuationText(tokenizer, ids, gen), stops);
      if (live && text.startsWith(shown)) show(gen, true);
      else process.stdout.write(text);
      process.stdout.write('\n');
      process.stderr.write(
        `qrlhf: ${gen.length} tokens in ${secs.toFixed(2)} s (${(gen.length / Math.max(secs, 1e-9)).toFixed(1)} tok/s)` +
          `${result.finishedWithEos[0] ? ', stopped at EOS' : ''}\n`,
      );
    } finally {
      model.dispose();
    }
  }),
};

/** The text up to the first occurrence of any stop string (all of it when none occurs). */
export function cutAtStop(text: string, stops: readonly string[]): string {
  let end = text.length;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && i < end) end = i;
  }
  return text.slice(0, end);
}

/** Flag values may spell newlines and tabs as \n and \t (a shell passes them literally). */
function unescapeFlag(s: string): string {
  return s.replace(/\\n/g, '\n').replace(/\\t/g, '\t');
}

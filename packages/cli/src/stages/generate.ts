/**
 * `qrlhf generate`: continue a prompt (or start from BOS); only the continuation goes to stdout
 * (live on a terminal), the timing to stderr.
 */
import { existsSync } from 'node:fs';
import {
  MODEL_FIELDS, QrlhfError, RUN_FIELDS, Rng, defineConfig, dialogueFormatFor, eosIds, generate, initBackend, loadModel, promptIds, requireKeys, seedField,
  type ConfigOf, type Tokenizer,
} from '@qrlhf/core';

export const GENERATE_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'Hugging Face model folder or llama2.c .bin (required)' },
  ...MODEL_FIELDS,
  prompt: { type: 'string', default: '', doc: 'text to continue ("" = start from BOS); with a chat template, the user\'s message (or HH text: its turns)' },
  maxNewTokens: { type: 'int', default: 256, min: 0, doc: 'new tokens at most' },
  temperature: { type: 'number', default: 0, min: 0, doc: 'sampling temperature; 0 = greedy' },
  topK: { type: 'int', default: null, nullable: true, min: 1, doc: 'sample among the k most likely tokens (null = all)' },
  topP: { type: 'number', default: null, nullable: true, min: 0, minExclusive: true, max: 1, doc: 'nucleus sampling: the smallest set with probability >= p (null = off)' },
  seed: seedField('random seed of the sampling'),
  stop: { type: 'string[]', default: [], repeat: true, doc: 'stop when the continuation contains this text, which is cut off (repeatable; \\n and \\t are newline and tab, e.g. "\\n\\nHuman:")' },
  ...RUN_FIELDS,
});
export type GenerateConfig = ConfigOf<typeof GENERATE_SCHEMA>;

/** Path settings that must exist: "--model: PATH does not exist". */
export function mustExist(cfg: Record<string, unknown>, keys: readonly string[]): void {
  for (const k of keys) {
    const p = cfg[k];
    if (typeof p === 'string' && !existsSync(p)) throw new QrlhfError(`--${k}: ${p} does not exist`);
  }
}

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

export async function runGenerate(config: GenerateConfig): Promise<void> {
  const cfg = requireKeys(config, ['model'], 'generate');
  const stops = cfg.stop.map(unescapeFlag);
  if (stops.some((x) => x === '')) throw new QrlhfError('--stop: expected a non-empty text');
  mustExist(cfg, ['model', 'tokenizer']);
  await initBackend(cfg.backend);
  const { model, tokenizer } = await loadModel(cfg.model, cfg.tokenizer === null ? {} : { tokenizer: cfg.tokenizer });
  try {
    // With a chat template the prompt is a user turn (or HH text: its turns) rendered with the
    // generation prompt, and generation also stops at the template's end-of-turn token.
    const format = dialogueFormatFor(cfg.chatTemplate, tokenizer);
    const ids = cfg.prompt === '' ? [tokenizer.bosId] : promptIds(tokenizer, format, cfg.prompt, tokenizer.defaultAddBos);
    const eot = format.endOfTurn === null || cfg.prompt === '' ? undefined : tokenizer.tokenToId(format.endOfTurn);
    const stopIds = [...new Set([...eosIds(model.config, tokenizer.eosId), ...(eot === undefined ? [] : [eot])])];
    const context = model.config.maxPositionEmbeddings;
    const room = context - ids.length;
    if (room <= 0) throw new QrlhfError(`--prompt: ${ids.length} tokens fill the model's context of ${context} positions`);
    let steps = cfg.maxNewTokens;
    if (steps > room) {
      process.stderr.write(`qrlhf: --max-new-tokens ${cfg.maxNewTokens} lowered to ${room}: the context holds ${context} positions\n`);
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
    const result = await generate(model, [ids], {
      maxNewTokens: steps,
      temperature: cfg.temperature,
      ...(cfg.topK !== null ? { topK: cfg.topK } : {}),
      ...(cfg.topP !== null ? { topP: cfg.topP } : {}),
      eosTokenId: stopIds,
      rng: new Rng(cfg.seed),
      ...(live || stops.length
        ? {
            stop: (gen: number[]) => {
              if (live) show(gen, false);
              const text = continuationText(tokenizer, ids, gen);
              return stops.length > 0 && cutAtStop(text, stops) !== text;
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
}

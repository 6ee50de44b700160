/**
 * Rendering moves and questions into text, and parsing any text (including what a half-trained
 * policy writes) back into moves. The parser is the only way the world looks at a response, so
 * the reward of a text is well defined whatever the text is.
 */
import type { Rng } from '@qrlhf/core';
import { MOVE_IDS, MOVE_TEMPLATES, NUMBERS, TOPICS, type MoveId, type ParsedMoveId } from './spec.js';

export const HUMAN_TAG = '\n\nHuman:';
export const ASSISTANT_TAG = '\n\nAssistant:';

export interface ParsedMove {
  id: ParsedMoveId;
  /** the object a templated sentence names (undefined for garbled sentences and slot-free templates) */
  object?: string;
  /** the sentence as it appears in the response */
  text: string;
}

export const ALL_OBJECTS: string[] = TOPICS.flatMap((t) => t.objects);
export const ALL_VERBS: string[] = [...new Set(TOPICS.flatMap((t) => t.verbs))];

export function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(xs.length)]!;
}

/** Draws a key of a weight table with probability proportional to its weight. */
export function pickWeighted<K extends string>(rng: Rng, weights: Partial<Record<K, number>>): K {
  const entries = Object.entries(weights) as [K, number][];
  let total = 0;
  for (const [, w] of entries) total += Math.max(0, w);
  let u = rng.next() * total;
  for (const [k, w] of entries) {
    u -= Math.max(0, w);
    if (u < 0) return k;
  }
  return entries[entries.length - 1]![0];
}

export function fillTemplate(template: string, slots: { verb?: string; obj?: string; num?: string }): string {
  return template.replace(/\{(verb|obj|num)\}/g, (_, k: 'verb' | 'obj' | 'num') => {
    const v = slots[k];
    if (v === undefined) throw new Error(`template slot {${k}} left empty in "${template}"`);
    return v;
  });
}

export function renderMove(rng: Rng, move: MoveId, obj: string, verb: string): string {
  const template = pick(rng, MOVE_TEMPLATES[move]);
  return fillTemplate(template, { verb, obj, num: pick(rng, NUMBERS) });
}

/** Words of the world's vocabulary (for garbled sentences and the tokenizer's coverage). */
export function worldWords(): string[] {
  const words = new Set<string>();
  const add = (s: string) => {
    for (const w of s.replace(/\{(verb|obj|num)\}/g, ' ').split(/[^A-Za-z]+/)) if (w) words.add(w.toLowerCase());
  };
  for (const t of Object.values(MOVE_TEMPLATES)) t.forEach(add);
  for (const o of ALL_OBJECTS) words.add(o);
  for (const v of ALL_VERBS) words.add(v);
  for (const n of NUMBERS) words.add(n);
  return [...words].sort();
}

/** Share of garbled sentences that splice two templates (the rest are word salad). */
export const SPLICED_SHARE = 0.75;

/**
 * A sentence that matches no template, of one of the two kinds a small policy writes: most often
 * the opening of one move's template run into the end of another's ("The best way is to season
 * the rice is like your ex, it never listens and costs money."), which is what the Figure 3 policy
 * garbles, otherwise a salad of the world's words. Ratings and pairs carry both kinds, so a reward
 * model sees that a spliced sentence is worth less than the moves it borrows its words from.
 */
export function garbledSentence(rng: Rng, words: string[], obj: string, verb: string): string {
  const spliced = rng.next() < SPLICED_SHARE ? splicedSentence(rng, obj, verb) : null;
  if (spliced !== null) return spliced;
  const n = 4 + rng.int(6);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(pick(rng, words));
  const s = out.join(' ');
  return s[0]!.toUpperCase() + s.slice(1) + '.';
}

/** One template's opening (without its last word, which carries the end mark) run into another's ending; null if ten draws all parsed as a move. */
export function splicedSentence(rng: Rng, obj: string, verb: string): string | null {
  for (let tries = 0; tries < 10; tries++) {
    const a = renderMove(rng, pick(rng, MOVE_IDS), obj, verb).split(' ');
    const b = renderMove(rng, pick(rng, MOVE_IDS), obj, verb).split(' ');
    const s = [...a.slice(0, 1 + rng.int(a.length - 1)), ...b.slice(1 + rng.int(b.length - 1))].join(' ');
    const parsed = parseResponse(s);
    if (parsed.length === 1 && parsed[0]!.id === 'garbled') return s;
  }
  return null;
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const alt = (xs: string[]) => `(${[...xs].sort((a, b) => b.length - a.length).map(escapeRe).join('|')})`;

interface CompiledTemplate {
  move: MoveId;
  re: RegExp;
  /** index of the capture group holding the object, or -1 */
  objGroup: number;
}

function compileTemplates(): CompiledTemplate[] {
  const out: CompiledTemplate[] = [];
  for (const move of MOVE_IDS) {
    for (const t of MOVE_TEMPLATES[move]) {
      let src = '';
      let group = 0;
      let objGroup = -1;
      for (const part of t.split(/(\{verb\}|\{obj\}|\{num\})/)) {
        if (part === '{verb}') { src += alt(ALL_VERBS); group++; }
        else if (part === '{obj}') { src += alt(ALL_OBJECTS); group++; objGroup = group; }
        else if (part === '{num}') { src += alt(NUMBERS); group++; }
        else src += escapeRe(part);
      }
      out.push({ move, re: new RegExp(src, 'y'), objGroup });
    }
  }
  return out;
}

const COMPILED = compileTemplates();

/**
 * Splits a response into moves: at each position the longest template match wins; text that
 * matches no template is one 'garbled' move up to the next sentence end (., ! or ? followed by
 * white space or the end of the text).
 */
export function parseResponse(response: string): ParsedMove[] {
  const moves: ParsedMove[] = [];
  let p = 0;
  const n = response.length;
  while (p < n) {
    while (p < n && /\s/.test(response[p]!)) p++;
    if (p >= n) break;
    let best: { move: MoveId; end: number; object?: string } | null = null;
    for (const c of COMPILED) {
      c.re.lastIndex = p;
      const m = c.re.exec(response);
      if (!m) continue;
      const end = p + m[0].length;
      // a template must end at a word boundary: the end of text or white space
      if (end < n && !/\s/.test(response[end]!)) continue;
      if (!best || end > best.end) best = { move: c.move, end, ...(c.objGroup > 0 ? { object: m[c.objGroup] } : {}) };
    }
    if (best) {
      moves.push({ id: best.move, text: response.slice(p, best.end), ...(best.object !== undefined ? { object: best.object } : {}) });
      p = best.end;
      continue;
    }
    const re = /[.!?](?=\s|$)/g;
    re.lastIndex = p;
    const m = re.exec(response);
    const end = m ? m.index + 1 : n;
    moves.push({ id: 'garbled', text: response.slice(p, end) });
    p = end;
  }
  return moves;
}

/** The object the user asks about: the last world object named in the last human turn (null if none). */
export function askedObject(prompt: string): string | null {
  const h = prompt.lastIndexOf(HUMAN_TAG);
  const turn = h >= 0 ? prompt.slice(h + HUMAN_TAG.length) : prompt;
  const a = turn.indexOf(ASSISTANT_TAG);
  const q = a >= 0 ? turn.slice(0, a) : turn;
  let best: string | null = null;
  let bestAt = -1;
  for (const o of ALL_OBJECTS) {
    const re = new RegExp(`\\b${escapeRe(o)}\\b`, 'g');
    let m: RegExpExecArray | null;
    while ((m = re.exec(q))) {
      if (m.index > bestAt) { bestAt = m.index; best = o; }
    }
  }
  return best;
}

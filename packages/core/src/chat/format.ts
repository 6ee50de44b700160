/**
 * How a stage writes a dialogue for its model: the HH-RLHF text format or the model's chat template.
 *
 * Why this file exists: every stage that feeds a conversation to a model (SFT data, RLOO prompts,
 * QRM features, generate, evaluation) needs the same three answers, and they must agree across
 * stages:
 *   prompt(messages)  the text the model continues: the turns, then the header that opens the
 *                     assistant's reply (HH: "\n\nAssistant:"; ChatML: "<|im_start|>assistant\n");
 *   split(messages)   a conversation that ends with an assistant turn, as
 *                     prompt = prompt(messages[:-1]), reply = the final turn's text followed by
 *                     its end-of-turn token (the loss of SFT covers exactly `reply`), and
 *                     userTurnEnd = the length of the prefix of `prompt` that ends with the token
 *                     closing the last user turn (where the QRM reads its prompt feature, SPEC §4);
 *   endOfTurn         the token string that closes a reply (a stop token for generation).
 * The option every stage takes is `chatTemplate: 'auto' | 'hh' | PATH`: auto = the model's
 * template when its folder has one, else HH (so a model without a template behaves as before).
 *
 * A template's pieces are found by rendering, never by knowing the format: the reply is what
 * render(messages) adds after render(messages[:-1], generation prompt), and the end-of-turn is the
 * text up to the first special token after the final turn's content (located with a sentinel
 * content). Templates for which render(messages) does not start with that prompt are refused.
 */
import { readFileSync } from 'node:fs';
import { QrlhfError } from '../errors.js';
import { ASSISTANT_TAG, HUMAN_TAG } from '../data/dialogue.js';
import { ChatTemplate, type ChatMessage } from './template.js';

/** The value of every stage's `chatTemplate` setting: 'auto', 'hh', or the path of a template. */
export type ChatTemplateOption = string;
export const CHAT_TEMPLATE_DOC =
  "dialogue format: 'auto' = the model's chat template (tokenizer_config.json) when it has one, else HH; 'hh' = \"\\n\\nHuman: ... \\n\\nAssistant:\"; or the PATH of a template (.jinja, a .json holding chat_template, or a model folder)";

export interface DialogueSplit {
  /** Everything before the reply, ending with the generation prompt. */
  prompt: string;
  /** The final assistant turn's text and its end-of-turn token (HH: " " + the reply; no end-of-turn). */
  reply: string;
  /** Whether `reply` ends with the end-of-turn token (else a stage appends EOS, as the HH format does). */
  endsTurn: boolean;
  /** Length of the prefix of `prompt` that ends with the token closing the last user turn. */
  userTurnEnd: number;
}

export interface DialogueFormat {
  /** 'hh', or the template's file. */
  readonly name: string;
  /** The chat template (null for HH). */
  readonly template: ChatTemplate | null;
  /** The token string that closes a reply (null for HH, whose replies end with EOS). */
  readonly endOfTurn: string | null;
  /** The text the model continues: the turns (ending with a user turn) and the reply's header. */
  prompt(messages: readonly ChatMessage[]): string;
  /** The turns as written, with the reply's header at the end when `generationPrompt` (`qrlhf template`). */
  text(messages: readonly ChatMessage[], generationPrompt: boolean): string;
  /** A conversation ending with an assistant turn, cut before its reply (see DialogueSplit). */
  split(messages: readonly ChatMessage[]): DialogueSplit;
}

const HH_TURN = /(?:^|\n\n)(Human|Assistant):/g;

/**
 * The turns of an HH-RLHF text ("\n\nHuman: ...\n\nAssistant: ..."): every Human turn a user
 * message, every Assistant turn an assistant message, contents trimmed. Text before the first
 * marker (none in HH-RLHF) is a user turn; a text without markers is one user turn.
 */
export function hhToMessages(text: string): ChatMessage[] {
  const out: ChatMessage[] = [];
  let role: string | null = null;
  let from = 0;
  const push = (end: number) => {
    const content = text.slice(from, end).trim();
    if (role !== null) out.push({ role, content });
    else if (content !== '') out.push({ role: 'user', content });
  };
  for (const m of text.matchAll(HH_TURN)) {
    push(m.index!);
    role = m[1] === 'Human' ? 'user' : 'assistant';
    from = m.index! + m[0].length;
  }
  push(text.length);
  return out;
}

/** The turns of an HH prompt ("...\n\nAssistant:"): hhToMessages without the empty final Assistant turn. */
export function hhPromptToMessages(text: string): ChatMessage[] {
  const msgs = hhToMessages(text);
  const last = msgs[msgs.length - 1];
  if (last && last.role === 'assistant' && last.content === '') msgs.pop();
  return msgs;
}

/** The messages of a prompt/response pair whose prompt is HH text or plain text. */
export function pairToMessages(prompt: string, response: string): ChatMessage[] {
  return [...hhPromptToMessages(prompt), { role: 'assistant', content: response.trim() }];
}

/**
 * The conversation in a JSON file: an array of {role, content} (strings; other keys, such as
 * tool_calls, are passed to the template as they are). Errors name the file and the message.
 */
export function readMessagesFile(path: string): ChatMessage[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new QrlhfError(`${path}: cannot read the messages file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new QrlhfError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(v)) throw new QrlhfError(`${path}: expected a JSON array of {role, content} messages`);
  v.forEach((m, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new QrlhfError(`${path}: message ${i}: expected an object {role, content}`);
    for (const k of ['role', 'content']) {
      if (typeof (m as Record<string, unknown>)[k] !== 'string') {
        throw new QrlhfError(`${path}: message ${i}: "${k}" must be a string, got ${JSON.stringify((m as Record<string, unknown>)[k]) ?? 'nothing'}`);
      }
    }
  });
  return v as ChatMessage[];
}

function checkMessages(messages: readonly ChatMessage[], what: string): void {
  if (messages.length === 0) throw new QrlhfError(`${what}: the conversation has no turns`);
  messages.forEach((m, i) => {
    if (!m || typeof m.role !== 'string' || typeof m.content !== 'string') {
      throw new QrlhfError(`${what}: message ${i}: expected {role: string, content: string}, got ${JSON.stringify(m)?.slice(0, 80)}`);
    }
  });
}

function hhText(messages: readonly ChatMessage[]): string {
  return messages
    .map((m) => {
      if (m.role === 'system') return m.content;
      const tag = m.role === 'assistant' ? ASSISTANT_TAG : HUMAN_TAG;
      return m.content === '' ? tag : `${tag} ${m.content}`;
    })
    .join('');
}

/** The HH-RLHF format: "\n\nHuman: ..." / "\n\nAssistant: ..." turns (a system message is plain leading text). */
export const HH_FORMAT: DialogueFormat = {
  name: 'hh',
  template: null,
  endOfTurn: null,
  prompt(messages) {
    checkMessages(messages, 'hh format');
    return hhText(messages) + ASSISTANT_TAG;
  },
  text(messages, generationPrompt) {
    checkMessages(messages, 'hh format');
    return hhText(messages) + (generationPrompt ? ASSISTANT_TAG : '');
  },
  split(messages) {
    checkMessages(messages, 'hh format');
    const last = messages[messages.length - 1]!;
    if (last.role !== 'assistant') throw new QrlhfError(`hh format: the conversation ends with a "${last.role}" turn, not an assistant reply`);
    const prompt = hhText(messages.slice(0, -1)) + ASSISTANT_TAG;
    return { prompt, reply: ` ${last.content}`, endsTurn: false, userTurnEnd: prompt.length };
  },
};

const SENTINEL = 'QRLHFSENTINEL7f3a9';

/** A chat template as a DialogueFormat. `now` pins strftime_now for the format's whole life. */
export class TemplateFormat implements DialogueFormat {
  readonly name: string;
  private readonly now: Date;
  private readonly special: readonly string[];
  private eot: string | null | undefined;

  /** `specialTokens`: the tokenizer's own special token strings, besides those its config names. */
  constructor(
    readonly template: ChatTemplate,
    opts: { now?: Date; specialTokens?: readonly string[] } = {},
  ) {
    this.name = template.where;
    this.now = opts.now ?? new Date();
    this.special = [...new Set([...template.specialStrings, ...(opts.specialTokens ?? [])])].filter((x) => x !== '');
  }

  /** Found once, from a probe conversation (a user turn and a reply). */
  get endOfTurn(): string | null {
    if (this.eot === undefined) {
      const probe = this.turnTail([{ role: 'user', content: 'Hi' }], 'assistant');
      this.eot = probe.eot === '' ? null : probe.eot.slice(probe.eot.length - probe.special.length);
    }
    return this.eot;
  }

  private render(messages: readonly ChatMessage[], gen: boolean): string {
    return this.template.render(messages, { addGenerationPrompt: gen, now: this.now });
  }

  /**
   * What the template writes after the content of a final `role` turn appended to `before`: the
   * text from the end of the content to the end of the render (`after`), its end-of-turn part
   * (`eot`: up to and including the first special token; '' when it holds none) and that token.
   */
  private turnTail(before: readonly ChatMessage[], role: string): { after: string; eot: string; special: string } {
    const text = this.render([...before, { role, content: SENTINEL }], false);
    const at = text.lastIndexOf(SENTINEL);
    if (at < 0) throw new QrlhfError(`${this.template.where}: the template does not write the content of a final "${role}" turn`);
    const after = text.slice(at + SENTINEL.length);
    let best = -1;
    let special = '';
    for (const s of this.special) {
      const i = after.indexOf(s);
      if (i >= 0 && (best < 0 || i < best || (i === best && s.length > special.length))) {
        best = i;
        special = s;
      }
    }
    return { after, eot: best < 0 ? '' : after.slice(0, best + special.length), special };
  }

  prompt(messages: readonly ChatMessage[]): string {
    checkMessages(messages, this.template.where);
    return this.render(messages, true);
  }

  text(messages: readonly ChatMessage[], generationPrompt: boolean): string {
    checkMessages(messages, this.template.where);
    return this.render(messages, generationPrompt);
  }

  split(messages: readonly ChatMessage[]): DialogueSplit {
    const where = this.template.where;
    checkMessages(messages, where);
    const last = messages[messages.length - 1]!;
    if (last.role !== 'assistant') throw new QrlhfError(`${where}: the conversation ends with a "${last.role}" turn, not an assistant reply`);
    const before = messages.slice(0, -1);
    const prompt = this.render(before, true);
    const full = this.render(messages, false);
    if (!full.startsWith(prompt)) {
      throw new QrlhfError(`${where}: the conversation rendered whole does not begin with its prompt rendered with the generation prompt, ` +
        'so the reply cannot be cut off (qrlhf needs templates whose earlier turns do not change when a reply is added)');
    }
    const tail = this.turnTail(before, 'assistant');
    const rest = full.slice(prompt.length);
    if (!rest.endsWith(tail.after)) throw new QrlhfError(`${where}: the template ends a reply differently depending on its content`);
    const reply = rest.slice(0, rest.length - tail.after.length) + tail.eot;
    // The prompt feature's place: the end of the last user turn's end-of-turn token.
    let userTurnEnd = prompt.length;
    const lastUser = before[before.length - 1];
    if (lastUser && lastUser.role !== 'assistant') {
      const closed = this.render(before, false);
      const u = this.turnTail(before.slice(0, -1), lastUser.role);
      if (prompt.startsWith(closed) && closed.endsWith(u.after) && u.eot !== '') {
        userTurnEnd = closed.length - u.after.length + u.eot.length;
      }
    }
    return { prompt, reply, endsTurn: tail.eot !== '', userTurnEnd };
  }
}

/** The `chatTemplate` field of every stage's schema (defineConfig), declared once. */
export const CHAT_TEMPLATE_FIELD = { type: 'string', default: 'auto', path: isChatTemplatePath, doc: CHAT_TEMPLATE_DOC } as const;

/** Whether a `chatTemplate` value is a path (to be resolved against a config file's folder). */
export function isChatTemplatePath(v: unknown): v is string {
  return typeof v === 'string' && v !== '' && v !== 'auto' && v !== 'hh';
}

/** Where a format's template can come from: the model's tokenizer config and folder. */
export interface FormatSource {
  /** tokenizer_config.json content (its chat_template and special tokens). */
  tokenizerConfig?: Record<string, unknown>;
  /** The folder holding tokenizer_config.json (a chat_template.jinja there wins). */
  dir?: string | null;
  /** Names the source in errors. */
  where?: string;
  /** The tokenizer's own special token strings (end-of-turn tokens the config may not name). */
  specialTokens?: readonly string[];
}

/**
 * The format a `chatTemplate` setting names: 'hh'; 'auto' (the source's template, else HH); or
 * a PATH (.jinja text, a .json with "chat_template", or a folder), whose missing special tokens
 * come from the source's tokenizer config.
 */
export function resolveDialogueFormat(option: ChatTemplateOption, source: FormatSource = {}, options: { now?: Date } = {}): DialogueFormat {
  if (option === 'hh') return HH_FORMAT;
  const opts = { ...options, specialTokens: source.specialTokens ?? [] };
  const cfg = source.tokenizerConfig ?? {};
  if (option === 'auto') {
    const t = (source.dir ? ChatTemplate.fromDir(source.dir) : null) ?? ChatTemplate.fromTokenizerConfig(cfg, source.where ?? 'tokenizer_config.json');
    return t ? new TemplateFormat(t, opts) : HH_FORMAT;
  }
  if (typeof option !== 'string' || option === '') throw new QrlhfError(`chatTemplate: expected 'auto', 'hh' or the path of a template, got ${JSON.stringify(option)}`);
  return new TemplateFormat(ChatTemplate.fromPath(option, cfg), opts);
}

/** The format `option` names for a model whose tokenizer is `tok` (its config and folder give 'auto'). */
export function dialogueFormatFor(
  option: ChatTemplateOption,
  tok: {
    readonly tokenizerConfig: Readonly<Record<string, unknown>>;
    readonly dir: string | null;
    readonly source: string;
    specialTokenStrings?(): string[];
  },
  opts: { now?: Date } = {},
): DialogueFormat {
  const specialTokens = tok.specialTokenStrings?.() ?? [];
  return resolveDialogueFormat(option, { tokenizerConfig: { ...tok.tokenizerConfig }, dir: tok.dir, where: tok.source, specialTokens }, opts);
}

/**
 * The token ids a model continues for a prompt text (HH text, or plain text = one user turn): for
 * HH the text as it is, BOS first when `hhBos` (each stage's convention before templates); for a
 * template, the prompt's turns rendered with the generation prompt, BOS as formatNeedsBos says.
 */
export function promptIds(
  tok: { readonly bosId: number; readonly defaultAddBos: boolean; encode(text: string, o?: { addBos?: boolean }): number[] },
  format: DialogueFormat,
  text: string,
  hhBos: boolean,
): number[] {
  const written = format.template ? format.prompt(hhPromptToMessages(text)) : text;
  const bos = formatNeedsBos(format, written, tok.defaultAddBos, hhBos);
  return [...(bos ? [tok.bosId] : []), ...tok.encode(written, { addBos: false })];
}

/**
 * Whether a stage puts the tokenizer's BOS before a text of `format`: for HH, the stage's own
 * convention (`hhBos`, unchanged from before templates); for a template, when the tokenizer adds
 * one and the text does not already begin with it (ChatTemplate.needsBos).
 */
export function formatNeedsBos(format: DialogueFormat, text: string, tokenizerAddsBos: boolean, hhBos: boolean): boolean {
  return format.template ? format.template.needsBos(text, tokenizerAddsBos) : hhBos;
}

/**
 * A model's chat template, rendered as transformers' `apply_chat_template` renders it.
 *
 * Why this file exists: instruct models were trained on their own turn format (ChatML, the Llama 3
 * headers, Zephyr's <|user|> blocks ...), which their tokenizer_config.json carries as a Jinja
 * `chat_template`. transformers renders it with jinja2 (trim_blocks, lstrip_blocks) in a context of
 *   messages, add_generation_prompt, the special tokens of the tokenizer (bos_token, eos_token,
 *   unk_token, pad_token, ... as strings), and the globals raise_exception(msg) and strftime_now(fmt)
 * and (for apply_chat_template(tokenize=True)) tokenises the text WITHOUT adding special tokens,
 * since the template writes the ones it wants. We render with @huggingface/jinja, Hugging Face's
 * JavaScript implementation of the same engine for exactly these templates, in the same context.
 *
 * Differences from the library defaults, and why:
 * - raise_exception throws a QrlhfError naming the template's file and the template's message;
 * - strftime_now formats a date we can inject (`now`), with C-locale English names as Python's
 *   strftime (the library's uses the machine's locale, so "%b" could read "déc.");
 * - BOS: `needsBos` says whether to put the tokenizer's BOS before a rendered text: when the
 *   tokenizer's convention adds one (add_bos_token / its post-processor) and the text does not
 *   already start with bos_token. transformers adds none at all (TinyLlama then trains without
 *   the <s> its tokenizer always adds elsewhere); tokenising the text with the tokenizer's defaults
 *   doubles the BOS of Llama 3 (its template writes <|begin_of_text|>). Our rule gives each model
 *   exactly one BOS where its tokenizer expects one.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { QrlhfError } from '../errors.js';

/** One turn of a conversation. */
export interface ChatMessage {
  role: string;
  content: string;
}

export interface RenderOptions {
  /** End with the header that opens the assistant's reply (transformers' add_generation_prompt). */
  addGenerationPrompt?: boolean;
  /** The date strftime_now formats (default: now). Tests pin it. */
  now?: Date;
  /** Extra template variables (e.g. `tools`, `date_string`), as transformers' **kwargs. */
  variables?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/** The special-token keys transformers passes to a template (its special_tokens_map). */
const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** A token named in a tokenizer config: a string, or an AddedToken object `{content, ...}`. */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json)['content'] === 'string') return (v as Json)['content'] as string;
  return undefined;
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/**
 * Python's `datetime.strftime` for the directives chat templates use, in the C locale, on the
 * local time of `d` (transformers formats `datetime.now()`, local time too). An unsupported
 * directive throws, naming it.
 */
export function strftime(d: Date, format: string): string {
  const p2 = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%(.)/g, (all, c: string) => {
    switch (c) {
      case 'Y': return String(d.getFullYear());
      case 'y': return p2(d.getFullYear() % 100);
      case 'm': return p2(d.getMonth() + 1);
      case 'd': return p2(d.getDate());
      case 'e': return String(d.getDate()).padStart(2, ' ');
      case 'b': return MONTHS[d.getMonth()]!.slice(0, 3);
      case 'B': return MONTHS[d.getMonth()]!;
      case 'a': return DAYS[d.getDay()]!.slice(0, 3);
      case 'A': return DAYS[d.getDay()]!;
      case 'H': return p2(d.getHours());
      case 'I': return p2(((d.getHours() + 11) % 12) + 1);
      case 'p': return d.getHours() < 12 ? 'AM' : 'PM';
      case 'M': return p2(d.getMinutes());
      case 'S': return p2(d.getSeconds());
      case 'j': {
        const start = new Date(d.getFullYear(), 0, 1);
        return String(Math.round((new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime() - start.getTime()) / 86400000) + 1).padStart(3, '0');
      }
      case '%': return '%';
      default: throw new QrlhfError(`strftime_now: the directive ${all} is not supported (supported: %Y %y %m %d %e %b %B %a %A %H %I %p %M %S %j %%)`);
    }
  });
}

/** Python's range(stop) / range(start, stop[, step]). */
function pyRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() step must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

/** Thrown by the template's raise_exception; caught by render() and turned into a QrlhfError. */
class TemplateRaised extends Error {}

export class ChatTemplate {
  /** The special tokens given to the template, by key (bos_token, eos_token, ...). */
  readonly specialTokens: Readonly<Record<string, string>>;
  /** Every special token string the tokenizer config declares (named ones and added special tokens). */
  readonly specialStrings: readonly string[];
  /** additional_special_tokens, as strings. */
  readonly additionalSpecialTokens: readonly string[];
  private readonly compiled: Template;

  /**
   * @param source the Jinja text
   * @param tokenizerConfig tokenizer_config.json content (special tokens; its chat_template is not read here)
   * @param where names the template in errors (a file)
   */
  constructor(
    readonly source: string,
    tokenizerConfig: Json,
    readonly where: string,
  ) {
    try {
      this.compiled = new Template(source);
    } catch (e) {
      throw new QrlhfError(`${where}: chat_template does not parse as Jinja (${(e as Error).message})`);
    }
    const special: Record<string, string> = {};
    const strings = new Set<string>();
    for (const k of SPECIAL_KEYS) {
      const s = tokenString(tokenizerConfig[k]);
      if (s !== undefined) {
        special[k] = s;
        strings.add(s);
      }
    }
    const extra = tokenizerConfig['additional_special_tokens'];
    const additional: string[] = [];
    if (Array.isArray(extra)) for (const t of extra) { const s = tokenString(t); if (s !== undefined) { additional.push(s); strings.add(s); } }
    this.additionalSpecialTokens = additional;
    const decoder = tokenizerConfig['added_tokens_decoder'];
    if (decoder && typeof decoder === 'object') {
      for (const t of Object.values(decoder as Json)) if (t && typeof t === 'object' && (t as Json)['special'] === true) { const s = tokenString(t); if (s) strings.add(s); }
    }
    this.specialTokens = special;
    this.specialStrings = [...strings].filter((s) => s.length > 0);
  }

  /** The template of a tokenizer_config.json object, or null when it has none. A list of named
   *  templates (transformers' format for several) gives the one named "default". */
  static fromTokenizerConfig(cfg: Json, where: string): ChatTemplate | null {
    let t = cfg['chat_template'];
    if (t === undefined || t === null) return null;
    if (Array.isArray(t)) {
      const named = t.find((x) => x && typeof x === 'object' && (x as Json)['name'] === 'default') as Json | undefined;
      if (!named) throw new QrlhfError(`${where}: "chat_template" is a list without a template named "default" (names: ${t.map((x) => JSON.stringify((x as Json)?.['name'])).join(', ')})`);
      t = named['template'];
    }
    if (typeof t !== 'string') throw new QrlhfError(`${where}: "chat_template": expected a string (a Jinja template), got ${JSON.stringify(t).slice(0, 60)}`);
    return new ChatTemplate(t, cfg, `${where} (chat_template)`);
  }

  /**
   * A model folder's template: chat_template.jinja (transformers' newer separate file) when present,
   * else chat_template.json's "chat_template", else tokenizer_config.json's; null when none.
   * The special tokens come from tokenizer_config.json.
   */
  static fromDir(dir: string): ChatTemplate | null {
    const cfgPath = join(dir, 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? readJsonObject(cfgPath) : {};
    const jinja = join(dir, 'chat_template.jinja');
    if (existsSync(jinja)) return new ChatTemplate(readFileSync(jinja, 'utf8'), cfg, jinja);
    const json = join(dir, 'chat_template.json');
    if (existsSync(json)) {
      const t = ChatTemplate.fromTokenizerConfig({ ...cfg, chat_template: readJsonObject(json)['chat_template'] }, json);
      if (t) return t;
    }
    return ChatTemplate.fromTokenizerConfig(cfg, cfgPath);
  }

  /**
   * A template named by the user: a folder (as fromDir), a .json file holding "chat_template"
   * (a tokenizer_config.json or chat_template.json), or any other file, read as the Jinja text.
   * Special tokens not in that file come from `tokenizerConfig` (the model's).
   */
  static fromPath(path: string, tokenizerConfig: Json = {}): ChatTemplate {
    if (!existsSync(path)) throw new QrlhfError(`${path}: chat template file not found`);
    if (statSync(path).isDirectory()) {
      const t = ChatTemplate.fromDir(path);
      if (!t) throw new QrlhfError(`${path}: the folder has no chat template (no chat_template.jinja, and no "chat_template" in tokenizer_config.json)`);
      return t;
    }
    if (path.endsWith('.json')) {
      const own = readJsonObject(path);
      const t = ChatTemplate.fromTokenizerConfig({ ...tokenizerConfig, ...own }, path);
      if (!t) throw new QrlhfError(`${path}: no "chat_template" key`);
      return t;
    }
    return new ChatTemplate(readFileSync(path, 'utf8'), tokenizerConfig, path);
  }

  /** The rendered text of `messages` (no tokens added: the template writes the special ones it wants). */
  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    const now = opts.now;
    // The globals of @huggingface/jinja's own render (setupGlobals), with our raise_exception and
    // strftime_now in place of its own (it refuses to redeclare them).
    const globals = new Environment();
    for (const [k, v] of Object.entries({ true: true, false: false, none: null, True: true, False: false, None: null })) globals.set(k, v);
    globals.set('range', pyRange);
    globals.set('raise_exception', (msg: unknown) => {
      throw new TemplateRaised(String(msg));
    });
    globals.set('strftime_now', (fmt: unknown) => strftime(now ?? new Date(), String(fmt)));
    const env = new Environment(globals);
    const context: Record<string, unknown> = {
      ...this.specialTokens,
      additional_special_tokens: [...this.additionalSpecialTokens],
      ...opts.variables,
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    };
    for (const [k, v] of Object.entries(context)) env.set(k, v);
    try {
      return (new Interpreter(env).run(this.compiled.parsed) as { value: string }).value;
    } catch (e) {
      if (e instanceof TemplateRaised) throw new QrlhfError(`${this.where}: the template raised an exception: ${e.message}`);
      if (e instanceof QrlhfError) throw new QrlhfError(`${this.where}: ${e.message}`);
      throw new QrlhfError(`${this.where}: the template failed to render (${(e as Error).message})`);
    }
  }

  /**
   * Whether a text rendered by this template needs the tokenizer's BOS in front: when the
   * tokenizer's convention adds one (`tokenizerAddsBos`) and the text does not already begin with
   * bos_token (see the header).
   */
  needsBos(text: string, tokenizerAddsBos: boolean): boolean {
    const bos = this.specialTokens['bos_token'];
    return tokenizerAddsBos && !(bos !== undefined && bos !== '' && text.startsWith(bos));
  }
}

function readJsonObject(path: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8').replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new QrlhfError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new QrlhfError(`${path}: expected a JSON object`);
  return v as Json;
}

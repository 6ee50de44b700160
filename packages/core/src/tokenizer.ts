/**
 * One tokenizer type for the whole project, over two sources:
 * - a Hugging Face tokenizer.json (through @huggingface/tokenizers), with tokenizer_config.json
 *   when it sits beside it;
 * - a llama2.c tokenizer (tok512.bin / tokenizer.bin), encoded with llama2.c's own algorithm,
 *   and convertible to an equivalent tokenizer.json (toJSON) that yields the same ids.
 *
 * BOS/EOS/PAD ids come, in this order, from the model config passed in, tokenizer_config.json, and
 * the tokenizer's own special tokens. encode() never adds special tokens unless asked (addBos);
 * `defaultAddBos` says whether the tokenizer's own convention starts a sequence with BOS.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { QrlhfError } from './errors.js';
import { Llama2cTokenizer } from './io/llama2c.js';
import type { LlamaConfig } from './model/config.js';

type Json = Record<string, unknown>;

interface Backend {
  readonly vocabSize: number;
  encode(text: string): number[];
  decode(ids: number[], skipSpecial: boolean): string;
  tokenToId(piece: string): number | undefined;
  idToToken(id: number): string | undefined;
  /** Ids of special (control) tokens, by content. */
  specialTokens(): Map<string, number>;
  /** The ids the tokenizer's own post-processing puts around a text ([] when none). */
  ownPrefix(): number[];
  toJSON(): Json;
}

class HfBackend implements Backend {
  readonly vocabSize: number;
  private readonly tok: HfTokenizer;
  private readonly cleanUp: boolean;
  constructor(
    private readonly json: Json,
    config: Json,
    where: string,
  ) {
    try {
      this.tok = new HfTokenizer(json, config);
    } catch (e) {
      throw new QrlhfError(`${where}: not a usable tokenizer.json (${(e as Error).message})`);
    }
    let max = -1;
    for (const id of this.tok.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    // tokenizers.js would "clean up" spaces before punctuation unless told not to, which breaks
    // exact round trips; only an explicit true in tokenizer_config.json turns it on.
    this.cleanUp = config['clean_up_tokenization_spaces'] === true;
  }
  encode(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }
  decode(ids: number[], skipSpecial: boolean): string {
    return this.tok.decode(ids, { skip_special_tokens: skipSpecial, clean_up_tokenization_spaces: this.cleanUp });
  }
  tokenToId(piece: string): number | undefined {
    return this.tok.token_to_id(piece);
  }
  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
  specialTokens(): Map<string, number> {
    const m = new Map<string, number>();
    for (const [id, t] of this.tok.get_added_tokens_decoder()) if (t.special) m.set(t.content, id);
    return m;
  }
  ownPrefix(): number[] {
    const withSpecial: number[] = this.tok.encode('a', { add_special_tokens: true }).ids;
    const plain: number[] = this.tok.encode('a', { add_special_tokens: false }).ids;
    const at = withSpecial.findIndex((_, i) => withSpecial.slice(i, i + plain.length).join() === plain.join());
    return at > 0 ? withSpecial.slice(0, at) : [];
  }
  toJSON(): Json {
    return this.json;
  }
}

class Llama2cBackend implements Backend {
  constructor(readonly tok: Llama2cTokenizer) {}
  get vocabSize(): number {
    return this.tok.vocabSize;
  }
  encode(text: string): number[] {
    return this.tok.encode(text);
  }
  decode(ids: number[], skipSpecial: boolean): string {
    return this.tok.decode(ids, { skipSpecial });
  }
  tokenToId(piece: string): number | undefined {
    const i = this.tok.pieces.indexOf(piece.replaceAll('\u2581', ' '));
    if (i >= 0) return i;
    const named = ['<unk>', '<s>', '</s>'].indexOf(piece);
    return named >= 0 ? named : undefined;
  }
  idToToken(id: number): string | undefined {
    if (id < 0 || id >= this.tok.vocabSize) return undefined;
    return this.tok.isSpecial(id) ? ['<unk>', '<s>', '</s>'][id] : this.tok.pieces[id]!.replaceAll(' ', '\u2581');
  }
  specialTokens(): Map<string, number> {
    return new Map([['<unk>', 0], ['<s>', 1], ['</s>', 2]]);
  }
  ownPrefix(): number[] {
    return [this.tok.bosId]; // run.c encodes prompts with bos = 1
  }
  toJSON(): Json {
    return this.tok.toTokenizerJson();
  }
}

const BOS_NAMES = ['<s>', '<|begin_of_text|>', '<bos>', '<|startoftext|>', '<|endoftext|>'];
const EOS_NAMES = ['</s>', '<|end_of_text|>', '<eos>', '<|endoftext|>', '<|eot_id|>', '<|im_end|>'];
const PAD_NAMES = ['<pad>', '<|pad|>', '<|finetune_right_pad_id|>'];

/** A token named in tokenizer_config.json: a string or an AddedToken object {content}. */
function configToken(cfg: Json, key: string): string | undefined {
  const v = cfg[key];
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json)['content'] === 'string') return (v as Json)['content'] as string;
  return undefined;
}

export interface TokenizerOptions {
  /** The model's ids (config.json): they win over everything else. */
  config?: Partial<LlamaConfig>;
  /** tokenizer_config.json content. */
  tokenizerConfig?: Record<string, unknown>;
  /** Names the source in error messages. */
  where?: string;
  /** The folder the tokenizer was read from (where its chat template may sit). */
  dir?: string;
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  /** Whether the tokenizer's own convention starts a sequence with BOS (Llama: yes; SmolLM2: no). */
  readonly defaultAddBos: boolean;
  /** Where it was loaded from (a path, or a description). */
  readonly source: string;
  /** The folder it was read from (null when built in memory or from a llama2.c file). */
  readonly dir: string | null;
  private readonly tokConfig: Json;

  private constructor(private readonly backend: Backend, opts: TokenizerOptions, source: string) {
    this.source = source;
    this.dir = opts.dir ?? null;
    this.vocabSize = backend.vocabSize;
    const where = opts.where ?? source;
    const cfg: Json = opts.tokenizerConfig ?? {};
    this.tokConfig = cfg;
    const special = backend.specialTokens();
    const byName = (key: string, names: string[]): number | undefined => {
      const named = configToken(cfg, key);
      if (named !== undefined) {
        const id = backend.tokenToId(named);
        if (id === undefined) throw new QrlhfError(`${where}: tokenizer_config.json "${key}" is "${named}", which is not in the vocabulary`);
        return id;
      }
      for (const n of names) if (special.has(n)) return special.get(n);
      return undefined;
    };
    const prefix = backend.ownPrefix();
    const c = opts.config ?? {};
    let bos = c.bosTokenId ?? byName('bos_token', BOS_NAMES) ?? (prefix.length === 1 ? prefix[0] : undefined);
    // A config with several eos ids (Llama 3.x Instruct) leaves the choice to tokenizer_config.json's
    // eos_token when it is one of them (<|eot_id|>, the end of a chat turn), else its first.
    const namedEos = c.eosTokenIds ? byName('eos_token', EOS_NAMES) : undefined;
    let eos = namedEos !== undefined && c.eosTokenIds!.includes(namedEos) ? namedEos : c.eosTokenId ?? byName('eos_token', EOS_NAMES);
    if (bos === undefined && eos === undefined) {
      throw new QrlhfError(`${where}: cannot tell the BOS/EOS tokens: no special token is named like one; ` +
        'give a tokenizer_config.json (bos_token, eos_token) or a model config with bos_token_id/eos_token_id');
    }
    bos ??= eos!;
    eos ??= bos;
    const pad = c.padTokenId ?? byName('pad_token', PAD_NAMES) ?? eos;
    for (const [name, id] of [['bos', bos], ['eos', eos], ['pad', pad]] as const) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new QrlhfError(`${where}: ${name} token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
    }
    this.bosId = bos;
    this.eosId = eos;
    this.padId = pad;
    const addBos = cfg['add_bos_token'];
    this.defaultAddBos = typeof addBos === 'boolean' ? addBos : prefix.length > 0 && prefix[0] === bos;
  }

  /**
   * Loads a tokenizer: a tokenizer.json (its tokenizer_config.json beside it is read too), a
   * folder holding one, or a llama2.c tokenizer (.bin). `config` gives the model's token ids.
   */
  static async fromFile(path: string, config?: Partial<LlamaConfig>): Promise<Tokenizer> {
    if (!existsSync(path)) throw new QrlhfError(`${path}: tokenizer file not found`);
    let file = path;
    if (statSync(path).isDirectory()) {
      file = join(path, 'tokenizer.json');
      if (!existsSync(file)) {
        for (const bin of ['tokenizer.bin', 'tok512.bin']) {
          if (existsSync(join(path, bin))) return Tokenizer.fromLlama2c(join(path, bin));
        }
        throw new QrlhfError(`${path}: folder has no tokenizer.json`);
      }
    }
    const bytes = readFileSync(file);
    // A JSON document starts with '{' (after blanks); anything else is taken as llama2.c's format.
    const first = bytes.subarray(0, 64).toString('latin1').trimStart()[0];
    if (first !== '{') {
      if (file.endsWith('.json')) throw new QrlhfError(`${file}: not a JSON document`);
      return Tokenizer.fromLlama2c(file, config);
    }
    let json: unknown;
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch (e) {
      throw new QrlhfError(`${file}: not valid JSON (${(e as Error).message})`);
    }
    let tokenizerConfig: Json | undefined;
    const cfgPath = join(dirname(file), 'tokenizer_config.json');
    if (existsSync(cfgPath)) {
      try {
        tokenizerConfig = JSON.parse(readFileSync(cfgPath, 'utf8')) as Json;
      } catch (e) {
        throw new QrlhfError(`${cfgPath}: not valid JSON (${(e as Error).message})`);
      }
      if (typeof tokenizerConfig !== 'object' || tokenizerConfig === null || Array.isArray(tokenizerConfig)) {
        throw new QrlhfError(`${cfgPath}: expected a JSON object`);
      }
    }
    return Tokenizer.fromJSON(json, { config, tokenizerConfig, where: file, dir: dirname(file) });
  }

  /** A tokenizer from a tokenizer.json document already in memory. */
  static fromJSON(json: unknown, opts: TokenizerOptions = {}): Tokenizer {
    const where = opts.where ?? 'tokenizer.json';
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new QrlhfError(`${where}: expected a JSON object`);
    const model = (json as Json)['model'];
    if (typeof model !== 'object' || model === null) throw new QrlhfError(`${where}: "model" is missing (expected the tokenizer model object)`);
    checkModelObject(model as Json, where);
    const added = (json as Json)['added_tokens'];
    if (added !== undefined && added !== null && !Array.isArray(added)) throw new QrlhfError(`${where}: "added_tokens" must be a list, got ${JSON.stringify(added).slice(0, 40)}`);
    // tokenizers.js insists on every top-level key; absent ones mean "none" in the Rust library.
    const j: Json = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...(json as Json) };
    j['added_tokens'] ??= [];
    return new Tokenizer(new HfBackend(j, opts.tokenizerConfig ?? {}, where), { ...opts, where }, where);
  }

  /** A llama2.c tokenizer file (tok512.bin, tokenizer.bin), encoded with llama2.c's algorithm. */
  static fromLlama2c(path: string, config?: Partial<LlamaConfig>): Tokenizer {
    const tok = Llama2cTokenizer.read(path);
    return new Tokenizer(new Llama2cBackend(tok), { config, where: path }, path);
  }

  /** Token ids of `text`; with addBos, BOS first. No other special tokens are added. */
  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = text.length === 0 ? [] : this.backend.encode(text);
    return opts.addBos ? [this.bosId, ...ids] : ids;
  }

  /** Text of `ids`; skipSpecial drops control tokens (BOS, EOS, ...). */
  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new QrlhfError(`${this.source}: token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      }
    }
    if (ids.length === 0) return '';
    return this.backend.decode(ids, opts.skipSpecial ?? false);
  }

  /** The id of a vocabulary piece (sentencepiece pieces use '▁' for space), or undefined. */
  tokenToId(piece: string): number | undefined {
    return this.backend.tokenToId(piece);
  }

  /** The piece of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.backend.idToToken(id);
  }

  /** A tokenizer.json document (for a llama2.c tokenizer: the equivalent converted one). */
  toJSON(): object {
    return this.backend.toJSON();
  }

  /** A llama2.c (SentencePiece) tokenizer's piece scores, or null for a tokenizer.json (GGUF's "llama" vocabulary needs them). */
  sentencePieceScores(): Float32Array | null {
    return this.backend instanceof Llama2cBackend ? this.backend.tok.scores : null;
  }

  /** The strings of its special (control) tokens. */
  specialTokenStrings(): string[] {
    return [...this.backend.specialTokens().keys()];
  }

  /** The tokenizer_config.json content it was loaded with ({} when none): special tokens, chat_template. */
  get tokenizerConfig(): Readonly<Record<string, unknown>> {
    return this.tokConfig;
  }

  /** tokenizer_config.json content to save beside toJSON(): the loaded one with our ids written in. */
  toConfigJSON(): Record<string, unknown> {
    const name = (id: number) => this.backend.idToToken(id) ?? null;
    const out: Json = { ...this.tokConfig };
    if (!('tokenizer_class' in out)) out['tokenizer_class'] = 'PreTrainedTokenizerFast';
    out['bos_token'] = name(this.bosId);
    out['eos_token'] = name(this.eosId);
    out['pad_token'] = name(this.padId);
    out['add_bos_token'] = this.defaultAddBos;
    if (!('add_eos_token' in out)) out['add_eos_token'] = false;
    if (!('clean_up_tokenization_spaces' in out)) out['clean_up_tokenization_spaces'] = false;
    delete out['added_tokens_decoder']; // tokenizer.json holds them
    return out;
  }
}

/**
 * A character-level tokenizer (a tokenizer.json BPE without merges: one token per character, ids
 * 0-2 for <unk>, <s>, </s>): tiny models in tests and examples, with no downloaded data.
 */
export function characterTokenizer(chars = " abcdefghijklmnopqrstuvwxyz:.\n,?!HA'"): Tokenizer {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (const c of chars) if (!(c in vocab)) vocab[c] = Object.keys(vocab).length;
  const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
  return Tokenizer.fromJSON(
    {
      version: '1.0',
      added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
      normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null,
      model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>', fuse_unk: false, byte_fallback: false },
    },
    { tokenizerConfig: { add_bos_token: true, bos_token: '<s>', eos_token: '</s>' } },
  );
}

/** The fields each tokenizer model type cannot do without (what the library reads first). */
const MODEL_FIELDS: Record<string, [string, 'object' | 'array'][]> = {
  BPE: [['vocab', 'object'], ['merges', 'array']],
  WordPiece: [['vocab', 'object']],
  WordLevel: [['vocab', 'object']],
  Unigram: [['vocab', 'array']],
};

/**
 * Valid JSON that is not a tokenizer (a config.json given by mistake, a truncated export) fails
 * deep inside the library with a message about undefined; say which field is missing instead.
 */
function checkModelObject(model: Json, where: string): void {
  const declared = model['type'];
  const type = typeof declared === 'string' ? declared : Array.isArray(model['vocab']) ? 'Unigram' : 'merges' in model ? 'BPE' : undefined;
  const need = type === undefined ? undefined : MODEL_FIELDS[type];
  if (!need) {
    throw new QrlhfError(`${where}: "model.type" is ${JSON.stringify(declared)}: expected one of ${Object.keys(MODEL_FIELDS).join(', ')}`);
  }
  for (const [key, kind] of need) {
    const v = model[key];
    const ok = kind === 'array' ? Array.isArray(v) : typeof v === 'object' && v !== null && !Array.isArray(v);
    if (!ok) throw new QrlhfError(`${where}: "model.${key}" is ${v === undefined ? 'missing' : JSON.stringify(v).slice(0, 40)}: a ${type} tokenizer needs it as ${kind === 'array' ? 'a list' : 'an object'}`);
  }
}

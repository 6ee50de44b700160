/**
 * Typed, self-documenting configs (CleanRL style): every setting of a stage is declared once with
 * its type, default and a one-line doc; a JSON file and command-line flags are checked against
 * that declaration, and the parsed object's TypeScript type follows from it.
 *
 *   const SftSchema = defineConfig({
 *     lr: { type: 'number', default: 3e-4, min: 0, doc: 'peak learning rate' },
 *     targets: { type: 'string[]', default: ['q_proj', 'v_proj'], doc: 'LoRA target modules' },
 *     utility: { type: 'string', default: 'expectation', choices: ['expectation', 'exponential'], doc: '...' },
 *     model: { type: 'string', default: null, nullable: true, doc: 'base model folder' },
 *   });
 *   type SftConfig = ConfigOf<typeof SftSchema>;   // { lr: number; targets: string[]; utility: 'expectation' | 'exponential'; model: string | null }
 *   const cfg = applyOverrides(SftSchema, loadConfigFile(SftSchema, 'configs/sft.json'), argv);
 *
 * JSON keys are the schema's keys (camelCase); flags may be written kebab-case (--max-steps).
 * Keys of a config file that begin with "//" (and "$schema") are comments and are ignored.
 *
 * Blocks: a field of type 'group' holds another schema (a stage's settings inside an experiment's,
 * an engine's inside a stage's). In JSON it is a nested object, a partial of that schema (the rest
 * at its defaults); as flags its keys are dotted: --rloo.lr 1e-3, --engine.base-url URL.
 *
 * Paths: a string field marked `path: true` holds a file or folder. A relative path is resolved once,
 * where the config is read: against the config file's folder when the file gives it, against the
 * working directory when a flag does (loadConfig). Run functions take the paths as they are.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { QrlhfError } from './errors.js';

interface CommonField {
  /** One line for --help and for readers of the config. */
  doc: string;
  /** null is an accepted value (and may be the default). */
  nullable?: boolean;
}
export interface ConfigNumberField extends CommonField {
  type: 'number' | 'int';
  default: number | null;
  min?: number;
  max?: number;
  /** min itself is excluded: the value must be > min (a learning rate, a risk aversion). */
  minExclusive?: boolean;
}
export interface ConfigStringField extends CommonField {
  type: 'string';
  default: string | null;
  choices?: readonly string[];
  /**
   * A file or folder: relative values are resolved where the config is read (see the file comment).
   * A function says which values are paths (a utility is a path only when it names a module).
   */
  path?: true | ((value: string) => boolean);
}
export interface ConfigBooleanField extends CommonField {
  type: 'boolean';
  default: boolean | null;
}
export interface ConfigStringListField extends CommonField {
  type: 'string[]';
  default: readonly string[] | null;
  /** Allowed elements. */
  choices?: readonly string[];
  /** As a flag: one element per occurrence (--stop A --stop B), not comma-separated (elements may hold commas). */
  repeat?: boolean;
}
export interface ConfigNumberListField extends CommonField {
  type: 'number[]';
  default: readonly number[] | null;
  /** Bounds on every element. */
  min?: number;
  max?: number;
}
/** A block of settings declared by another schema: a nested object in JSON, dotted flags (--rloo.lr). */
export interface ConfigGroupField {
  type: 'group';
  doc: string;
  schema: ConfigSchema;
}
export type ConfigValueField = ConfigNumberField | ConfigStringField | ConfigBooleanField | ConfigStringListField | ConfigNumberListField;
export type ConfigField = ConfigValueField | ConfigGroupField;
export type ConfigSchema = { readonly [key: string]: ConfigField };

type BaseValue<F> = F extends { type: 'number' | 'int' }
  ? number
  : F extends { type: 'string'; choices: readonly (infer C)[] }
    ? C
    : F extends { type: 'string' }
      ? string
      : F extends { type: 'boolean' }
        ? boolean
        : F extends { type: 'string[]'; choices: readonly (infer C)[] }
          ? C[]
          : F extends { type: 'string[]' }
            ? string[]
            : F extends { type: 'number[]' }
              ? number[]
              : never;
/** The value type of one field: `| null` only when the field is nullable; a group's is its schema's config. */
export type FieldValue<F> = F extends { type: 'group'; schema: infer S extends ConfigSchema }
  ? ConfigOf<S>
  : F extends { nullable: true }
    ? BaseValue<F> | null
    : BaseValue<F>;
/** The parsed config of a schema. */
export type ConfigOf<S extends ConfigSchema> = { -readonly [K in keyof S]: FieldValue<S[K]> };

function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  const txt = s === undefined ? String(v) : s;
  const kind = v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
  return `${txt.length > 60 ? `${txt.slice(0, 60)}...` : txt} (${kind})`;
}

function bounds(min: number | undefined, max: number | undefined, minExclusive = false): string {
  if (min !== undefined && max !== undefined) return ` in ${minExclusive ? '(' : '['}${min}, ${max}]`;
  if (min !== undefined) return ` ${minExclusive ? '>' : '>='} ${min}`;
  if (max !== undefined) return ` <= ${max}`;
  return '';
}

/** What a field accepts, in words: "an integer >= 1", "one of "a", "b"". */
export function expectedOf(f: ConfigField): string {
  if (f.type === 'group') return `an object of settings (keys: ${Object.keys(f.schema).join(', ')})`;
  let s: string;
  switch (f.type) {
    case 'number':
      s = `a number${bounds(f.min, f.max, f.minExclusive)}`;
      break;
    case 'int':
      s = `an integer${bounds(f.min, f.max, f.minExclusive)}`;
      break;
    case 'string':
      s = f.choices ? `one of ${f.choices.map((c) => JSON.stringify(c)).join(', ')}` : 'a string';
      break;
    case 'boolean':
      s = 'true or false';
      break;
    case 'string[]':
      s = f.choices ? `a list of ${f.choices.map((c) => JSON.stringify(c)).join(', ')}` : 'a list of strings';
      break;
    case 'number[]':
      s = `a list of numbers${bounds(f.min, f.max)}`;
      break;
  }
  return f.nullable ? `${s} or null` : s;
}

function inBounds(x: number, min: number | undefined, max: number | undefined, minExclusive = false): boolean {
  return Number.isFinite(x) && (min === undefined || (minExclusive ? x > min : x >= min)) && (max === undefined || x <= max);
}

/** Checks one JSON value against its field; returns the value (arrays copied) or undefined when it does not fit. */
function checkValue(f: ConfigValueField, v: unknown): { ok: true; value: unknown } | { ok: false } {
  if (v === null) return f.nullable ? { ok: true, value: null } : { ok: false };
  switch (f.type) {
    case 'number':
      return typeof v === 'number' && inBounds(v, f.min, f.max, f.minExclusive) ? { ok: true, value: v } : { ok: false };
    case 'int':
      return typeof v === 'number' && Number.isInteger(v) && inBounds(v, f.min, f.max, f.minExclusive) ? { ok: true, value: v } : { ok: false };
    case 'string':
      return typeof v === 'string' && (!f.choices || f.choices.includes(v)) ? { ok: true, value: v } : { ok: false };
    case 'boolean':
      return typeof v === 'boolean' ? { ok: true, value: v } : { ok: false };
    case 'string[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'string' && (!f.choices || f.choices.includes(x))) ? { ok: true, value: [...(v as string[])] } : { ok: false };
    case 'number[]':
      return Array.isArray(v) && v.every((x) => typeof x === 'number' && inBounds(x, f.min, f.max)) ? { ok: true, value: [...(v as number[])] } : { ok: false };
  }
}

/**
 * Checks one value against a field declared in a schema, for a library function that takes the
 * value outside a config (makeUtility's lambda): the same bound as the config's, declared once.
 */
export function checkField<T>(f: ConfigValueField, value: T, where: string): T {
  if (!checkValue(f, value).ok) throw new QrlhfError(`${where}: expected ${expectedOf(f)}, got ${show(value)}`);
  return value;
}

/** Levenshtein distance, for did-you-mean. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length]!;
}

const squash = (s: string): string => s.toLowerCase().replace(/[-_]/g, '');

/** The known key closest to `key`, if close enough to be a likely typo. */
export function didYouMean(key: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const k of known) {
    const d = squash(k) === squash(key) ? 0 : editDistance(squash(key), squash(k));
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : null;
}

/**
 * Declares a config schema. Returns it unchanged, with its literal types kept (choices become
 * unions); checks the declaration itself (a default that breaks its own field is a programming
 * error, thrown as a plain Error).
 */
export function defineConfig<const S extends ConfigSchema>(schema: S): S {
  for (const [k, f] of Object.entries(schema)) {
    if (k.includes('.')) throw new Error(`defineConfig: key "${k}" has a dot (dots join a block's name to its keys)`);
    if (f.type === 'group') continue; // its schema was checked by its own defineConfig
    if (!checkValue(f, f.default).ok) throw new Error(`defineConfig: the default of "${k}" (${show(f.default)}) is not ${expectedOf(f)}`);
  }
  return schema;
}

/** The schema without some keys (the ones an experiment sets itself, e.g. a stage's input paths). */
export function omitFields<S extends ConfigSchema, K extends keyof S & string>(schema: S, keys: readonly K[]): Omit<S, K> {
  const out: Record<string, ConfigField> = {};
  for (const [k, f] of Object.entries(schema)) if (!(keys as readonly string[]).includes(k)) out[k] = f;
  return out as Omit<S, K>;
}

function copyValue<T>(v: T): T {
  if (Array.isArray(v)) return [...(v as unknown[])] as T;
  if (v !== null && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) o[k] = copyValue(x);
    return o as T;
  }
  return v;
}

/** Every setting at its default. */
export function defaultConfig<S extends ConfigSchema>(schema: S): ConfigOf<S> {
  const out: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(schema)) out[k] = f.type === 'group' ? defaultConfig(f.schema) : copyValue(f.default);
  return out as ConfigOf<S>;
}

/** A path field's value resolved against `base` (other fields' values, absolute paths and null unchanged). */
function resolvePath(f: ConfigValueField, v: unknown, base: string | undefined): unknown {
  if (base === undefined || f.type !== 'string' || !f.path || typeof v !== 'string' || v === '' || isAbsolute(v)) return v;
  if (typeof f.path === 'function' && !f.path(v)) return v;
  return resolve(base, v);
}

function isComment(key: string): boolean {
  return key.startsWith('//') || key === '$schema';
}

/** `prefix` is the dotted block path of `schema` ("rloo." inside an experiment), "" at the top. */
function unknownKey(where: string, key: string, schema: ConfigSchema, flag: boolean, prefix = ''): QrlhfError {
  const known = Object.keys(schema);
  const guess = didYouMean(key, known);
  const flagOf = (k: string) => `--${dotted(prefix + k)}`;
  const name = flag ? `--${dotted(prefix)}${key}` : `"${prefix}${key}"`;
  const hint = guess ? ` (did you mean ${flag ? flagOf(guess) : `"${prefix}${guess}"`}?)` : '';
  return new QrlhfError(`${where}: unknown ${flag ? 'flag' : 'key'} ${name}${hint}; known: ${known.join(', ')}`);
}

const hasKey = (schema: ConfigSchema, k: string): boolean => Object.prototype.hasOwnProperty.call(schema, k);

function parseInto(schema: ConfigSchema, json: unknown, file: string, prefix: string, base: string | undefined): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new QrlhfError(prefix
      ? `${file}: key "${prefix.slice(0, -1)}": expected an object of settings (keys: ${Object.keys(schema).join(', ')}), got ${show(json)}`
      : `${file}: expected a JSON object of settings, got ${show(json)}`);
  }
  const out = defaultConfig(schema) as Record<string, unknown>;
  for (const [k, v] of Object.entries(json as Record<string, unknown>)) {
    if (isComment(k)) continue;
    const f = hasKey(schema, k) ? schema[k] : undefined;
    if (!f) throw unknownKey(file, k, schema, false, prefix);
    if (f.type === 'group') {
      out[k] = parseInto(f.schema, v, file, `${prefix}${k}.`, base);
      continue;
    }
    const r = checkValue(f, v);
    if (!r.ok) throw new QrlhfError(`${file}: key "${prefix}${k}": expected ${expectedOf(f)}, got ${show(v)}`);
    out[k] = resolvePath(f, r.value, base);
  }
  return out;
}

/**
 * Checks a parsed JSON document against the schema and fills the defaults. `file` names the
 * source in error messages. Unknown keys, wrong types and out-of-range values throw QrlhfErrors
 * naming the file and the key (with a did-you-mean for a typo), what was expected and what was given.
 * With `base`, relative paths (fields marked `path`) are resolved against it.
 */
export function parseConfig<S extends ConfigSchema>(schema: S, json: unknown, file = 'config', base?: string): ConfigOf<S> {
  return parseInto(schema, json, file, '', base) as ConfigOf<S>;
}

/**
 * The offset of the first JSON syntax error in `text` (JSON.parse's message has no position on
 * every Node version): a small recursive-descent walk of the JSON grammar.
 */
export function jsonErrorOffset(text: string): number {
  let i = 0;
  class Stop extends Error {}
  const fail = (): never => {
    throw new Stop();
  };
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const lit = (w: string): void => {
    if (text.startsWith(w, i)) i += w.length;
    else fail();
  };
  const str = (): void => {
    i++; // opening quote
    while (i < text.length && text[i] !== '"') {
      const c = text.charCodeAt(i);
      if (c < 0x20) fail();
      if (text[i] === '\\') {
        i++;
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail();
          i += 4;
        } else if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) fail();
      }
      i++;
    }
    if (i >= text.length) fail();
    i++;
  };
  const num = (): void => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!m || m[0] === '' || m[0] === '-') fail();
    i += m![0].length;
  };
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail();
        str();
        ws();
        if (text[i] !== ':') fail();
        i++;
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return;
        } else fail();
      }
    } else if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (;;) {
        value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return;
        } else fail();
      }
    } else if (c === '"') str();
    else if (c === 't') lit('true');
    else if (c === 'f') lit('false');
    else if (c === 'n') lit('null');
    else num();
  };
  try {
    if (text.charCodeAt(0) === 0xfeff) i = 1;
    value();
    ws();
    if (i < text.length) fail();
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
  }
  return Math.min(i, text.length);
}

/**
 * Reads and parses a JSON config file (see parseConfig); a JSON syntax error gives its line and
 * column. Relative paths in it are resolved against the file's folder.
 */
export function loadConfigFile<S extends ConfigSchema>(schema: S, path: string): ConfigOf<S> {
  if (!existsSync(path)) throw new QrlhfError(`${path}: no such config file`);
  const text = readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const at = jsonErrorOffset(text);
    const before = text.slice(0, at);
    const line = before.split('\n').length;
    const col = at - (before.lastIndexOf('\n') + 1) + 1;
    throw new QrlhfError(`${path}:${line}:${col}: invalid JSON: ${msg.split('\n')[0]}`);
  }
  return parseConfig(schema, json, path, dirname(resolve(path)));
}

/** camelCase → kebab-case: the flag of a key (maxSteps → max-steps). */
export const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
/** kebab-case (or snake_case) → camelCase: the key of a flag (max-steps → maxSteps). */
export const camel = (s: string): string => s.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
/** A dotted key path as a flag: rloo.maxSteps → rloo.max-steps. */
const dotted = (s: string): string => s.split('.').map(kebab).join('.');

/** A flag's value, given as a string (or as yargs already parsed it), turned into the field's type. */
function fromFlag(f: ConfigValueField, v: unknown): unknown {
  if (f.type === 'string[]' && f.repeat) {
    if (Array.isArray(v)) return v.map((x) => (typeof x === 'number' ? String(x) : x));
    return typeof v === 'string' || typeof v === 'number' ? [String(v)] : v;
  }
  if (typeof v !== 'string') {
    if (f.type === 'string' && (typeof v === 'number' || typeof v === 'boolean')) return String(v);
    if (f.type === 'string[]' && Array.isArray(v)) return v.map((x) => (typeof x === 'number' ? String(x) : x));
    if (f.type === 'number[]' && typeof v === 'number') return [v];
    if (f.type === 'string[]' && typeof v === 'number') return [String(v)];
    if (f.type === 'number[]' && Array.isArray(v)) return v.map((x) => (typeof x === 'string' && x.trim() !== '' ? Number(x) : x));
    return v;
  }
  const s = v.trim();
  if (f.nullable && (s === 'null' || s === 'none')) return null;
  switch (f.type) {
    case 'number':
    case 'int':
      return s === '' ? v : Number(s);
    case 'boolean':
      if (['true', '1', 'yes'].includes(s)) return true;
      if (['false', '0', 'no'].includes(s)) return false;
      return v;
    case 'string':
      return v;
    case 'string[]':
      return s === '' ? [] : s.split(',').map((x) => x.trim());
    case 'number[]':
      return s === '' ? [] : s.split(',').map((x) => (x.trim() === '' ? x : Number(x)));
  }
}

export interface OverrideOptions {
  /** Names the source in errors (default "command line"). */
  source?: string;
  /** Throw on a flag that is not a setting (default false: other flags of the command pass through). */
  strict?: boolean;
  /** Flags that are not settings but belong to the command (with strict). `_` and `$0` are always ignored. */
  ignore?: readonly string[];
  /** Relative paths given here are resolved against this folder (default: the working directory). */
  base?: string;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function applyInto(schema: ConfigSchema, out: Record<string, unknown>, flags: Record<string, unknown>, prefix: string, o: Required<Omit<OverrideOptions, 'ignore'>> & { ignore: Set<string> }): void {
  for (const [name, raw] of Object.entries(flags)) {
    if (raw === undefined || (prefix === '' && (o.ignore.has(name) || o.ignore.has(camel(name))))) continue;
    const dot = name.indexOf('.');
    const head = dot > 0 ? name.slice(0, dot) : name;
    const key = hasKey(schema, head) ? head : hasKey(schema, camel(head)) ? camel(head) : null;
    if (key === null) {
      if (o.strict || prefix !== '') throw unknownKey(o.source, kebab(head), schema, true, prefix);
      continue;
    }
    const f = schema[key]!;
    if (f.type === 'group') {
      // --rloo.lr X arrives as {"rloo.lr": X} or, parsed by yargs, as {rloo: {lr: X}}
      const inner = dot > 0 ? { [name.slice(dot + 1)]: raw } : raw;
      if (!isPlainObject(inner)) throw new QrlhfError(`${o.source}: --${dotted(prefix + key)}: a block of settings; set its keys as --${dotted(prefix + key)}.KEY VALUE (keys: ${Object.keys(f.schema).map(kebab).join(', ')})`);
      const sub = isPlainObject(out[key]) ? (out[key] as Record<string, unknown>) : (defaultConfig(f.schema) as Record<string, unknown>);
      out[key] = sub;
      applyInto(f.schema, sub, inner, `${prefix}${key}.`, o);
      continue;
    }
    if (dot > 0) throw unknownKey(o.source, dotted(name), schema, true, prefix);
    const r = checkValue(f, fromFlag(f, raw));
    if (!r.ok) throw new QrlhfError(`${o.source}: --${dotted(prefix + key)}: expected ${expectedOf(f)}, got ${show(raw)}`);
    out[key] = resolvePath(f, r.value, o.base);
  }
}

/**
 * Returns a copy of `cfg` with command-line flags applied. Flag names may be the key itself or its
 * kebab-case form (--max-steps for maxSteps); a block's keys are dotted (--rloo.max-steps, or a
 * nested object {rloo: {maxSteps}} as yargs parses it); values may be strings ("3e-4", "true",
 * "a,b,c", "null" for a nullable setting) or values a flag parser already converted. `undefined`
 * values are skipped (flags not given). A value that does not fit throws a QrlhfError naming the
 * flag; relative paths are resolved against opts.base (default: the working directory).
 */
export function applyOverrides<S extends ConfigSchema>(schema: S, cfg: ConfigOf<S>, flags: Record<string, unknown>, opts: OverrideOptions = {}): ConfigOf<S> {
  const out = copyValue(cfg) as Record<string, unknown>;
  applyInto(schema, out, flags, '', {
    source: opts.source ?? 'command line',
    strict: opts.strict ?? false,
    ignore: new Set(['_', '$0', ...(opts.ignore ?? [])]),
    base: opts.base ?? process.cwd(),
  });
  return out as ConfigOf<S>;
}

/**
 * The config a run uses: the schema's defaults < the config file (if any; its relative paths
 * against its folder) < the flags (relative paths against the working directory; an unknown flag
 * is an error unless listed in opts.ignore). Every stage reads its config this way.
 */
export function loadConfig<S extends ConfigSchema>(schema: S, file: string | null, flags: Record<string, unknown> = {}, opts: OverrideOptions = {}): ConfigOf<S> {
  const base = file ? loadConfigFile(schema, file) : defaultConfig(schema);
  return applyOverrides(schema, base, flags, { strict: true, ...opts });
}

/** Narrows nullable settings that a stage cannot run without; throws a QrlhfError naming the missing ones. */
export function requireKeys<C extends object, K extends keyof C & string>(
  cfg: C,
  keys: readonly K[],
  source = 'config',
): C & { [P in K]: NonNullable<C[P]> } {
  const missing = keys.filter((k) => cfg[k] === null || cfg[k] === undefined);
  if (missing.length > 0) {
    const list = missing.map((k) => `"${k}" (--${kebab(k)})`).join(', ');
    throw new QrlhfError(`${source}: ${missing.length === 1 ? 'setting' : 'settings'} ${list} must be set, in the config file or as a flag`);
  }
  return cfg as C & { [P in K]: NonNullable<C[P]> };
}

function showDefault(v: unknown): string {
  if (v === null) return 'none';
  if (Array.isArray(v)) return v.length ? v.join(',') : '(empty)';
  return String(v);
}

/** Every value field of a schema with its dotted key (blocks flattened: "rloo.lr"). */
export function flattenSchema(schema: ConfigSchema, prefix = ''): [key: string, field: ConfigValueField][] {
  return Object.entries(schema).flatMap(([k, f]) => (f.type === 'group' ? flattenSchema(f.schema, `${prefix}${k}.`) : [[`${prefix}${k}`, f] as [string, ConfigValueField]]));
}

/** The flag of a (dotted) key: rloo.maxSteps → --rloo.max-steps. */
export function flagOf(key: string): string {
  return `--${dotted(key)}`;
}

/** The parts of a field's help after its doc: "default: 3; choices: a, b; >= 1". */
export function fieldHelp(f: ConfigValueField): string {
  const extra: string[] = [`default: ${showDefault(f.default)}`];
  if ((f.type === 'string' || f.type === 'string[]') && f.choices) extra.push(`choices: ${f.choices.join(', ')}`);
  if ((f.type === 'number' || f.type === 'int') && (f.min !== undefined || f.max !== undefined)) extra.push(bounds(f.min, f.max, f.minExclusive).trim());
  if (f.type === 'number[]' && (f.min !== undefined || f.max !== undefined)) extra.push(bounds(f.min, f.max).trim());
  return extra.join('; ');
}

/** Help text: one line per setting with its flag, type, doc, default and constraints. */
export function describeConfig(schema: ConfigSchema): string {
  const rows = flattenSchema(schema).map(([k, f]) => {
    const meta =
      f.type === 'number[]' ? '<n,n,...>' : f.type === 'string[]' ? '<a,b,...>' : f.type === 'int' ? '<int>' : f.type === 'boolean' ? '[true|false]' : `<${f.type}>`;
    const left = `${flagOf(k)} ${meta}`;
    return [left, `${f.doc} (${fieldHelp(f)})`] as const;
  });
  const width = Math.max(0, ...rows.map(([l]) => l.length));
  return rows.map(([l, r]) => `  ${l.padEnd(width)}  ${r}`).join('\n');
}

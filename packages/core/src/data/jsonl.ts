import { createReadStream, existsSync, statSync } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import { QrlhfError } from '../errors.js';

/** One parsed JSONL row and its 1-based line number in the (decompressed) file. */
export interface JsonlRow {
  row: unknown;
  line: number;
}

/** gzip files begin with these two bytes whatever their name. */
async function isGzip(path: string): Promise<boolean> {
  if (path.endsWith('.gz')) return true;
  const stream = createReadStream(path, { start: 0, end: 1 });
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  const head = Buffer.concat(chunks);
  return head.length === 2 && head[0] === 0x1f && head[1] === 0x8b;
}

/**
 * Streams the lines of a text file, plain or gzip (by the `.gz` suffix or the gzip magic bytes),
 * without holding the whole file: chunks are decoded as UTF-8 across chunk borders, a trailing
 * '\r' is dropped (CRLF files), a leading byte-order mark is dropped.
 */
export async function* readLines(path: string): AsyncGenerator<{ text: string; line: number }> {
  if (!existsSync(path)) throw new QrlhfError(`${path}: no such file`);
  if (statSync(path).isDirectory()) throw new QrlhfError(`${path}: is a directory, expected a .jsonl or .jsonl.gz file`);
  const gz = await isGzip(path);
  const raw = createReadStream(path);
  let stream: Readable = raw;
  if (gz) {
    const gunzip = createGunzip();
    raw.on('error', (e) => gunzip.destroy(e));
    stream = raw.pipe(gunzip);
  }
  const decoder = new StringDecoder('utf8');
  let pending = '';
  let line = 0;
  const emit = (s: string): { text: string; line: number } => {
    line++;
    let text = s.endsWith('\r') ? s.slice(0, -1) : s;
    if (line === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    return { text, line };
  };
  try {
    for await (const chunk of stream) {
      pending += decoder.write(chunk as Buffer);
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        yield emit(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
      }
    }
  } catch (e) {
    if (e instanceof QrlhfError) throw e;
    const msg = e instanceof Error ? e.message : String(e);
    throw new QrlhfError(gz ? `${path}: cannot decompress (not a valid gzip file?): ${msg}` : `${path}: cannot read: ${msg}`, { cause: e });
  } finally {
    stream.destroy();
    raw.destroy();
  }
  pending += decoder.end();
  if (pending.length > 0) yield emit(pending);
}

/**
 * Streams the rows of a JSON-lines file (`.jsonl`, or gzip-compressed `.jsonl.gz`). Blank lines
 * are skipped; line numbers count every line, so `FILE:LINE` points at the line in an editor.
 * A line that is not valid JSON throws a QrlhfError "FILE:LINE: invalid JSON: ...".
 */
export async function* readJsonl(path: string): AsyncGenerator<JsonlRow> {
  for await (const { text, line } of readLines(path)) {
    if (text.trim() === '') continue;
    let row: unknown;
    try {
      row = JSON.parse(text);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      const shown = text.length > 60 ? `${text.slice(0, 60)}...` : text;
      throw new QrlhfError(`${path}:${line}: invalid JSON (${msg}): ${JSON.stringify(shown)}`);
    }
    yield { row, line };
  }
}

/**
 * Reads every row of a JSONL file through `validate(row, where)`, where `where` is "FILE:LINE"
 * for the validator's own error messages.
 */
export async function readJsonlAll<T>(path: string, validate: (row: unknown, where: string) => T): Promise<T[]> {
  const out: T[] = [];
  for await (const { row, line } of readJsonl(path)) out.push(validate(row, `${path}:${line}`));
  return out;
}

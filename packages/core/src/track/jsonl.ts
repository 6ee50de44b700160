import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import type { MetricSink, Metrics } from './sink.js';

export interface JsonlSinkOptions {
  /** Append to an existing file (resume) instead of starting it afresh. */
  append?: boolean;
  /** When appending: rows of the existing file to keep (e.g. `r => r.step < resumedStep`, to drop
   *  the rows a killed run logged after its last checkpoint). The file is rewritten atomically. */
  keep?: (row: Metrics) => boolean;
}

/**
 * Writes one JSON object per line. Every `log` writes its line straight to the file descriptor
 * (no user-space buffer), so a reader, or a run killed right after, sees every logged line.
 * In append mode a torn last line (a run killed mid-write) is ended with a newline first, so it
 * cannot glue itself to the next row.
 */
export class JsonlSink implements MetricSink {
  readonly path: string;
  private fd: number | null;

  constructor(path: string, opts: JsonlSinkOptions = {}) {
    this.path = path;
    mkdirSync(dirname(path), { recursive: true });
    if (opts.append && opts.keep && existsSync(path)) {
      const kept: string[] = [];
      for (const line of readFileSync(path, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        let row: unknown;
        try {
          row = JSON.parse(line);
        } catch {
          continue; // a torn line from a killed run
        }
        if (typeof row === 'object' && row !== null && !Array.isArray(row) && opts.keep(row as Metrics)) kept.push(line);
      }
      writeFileAtomic(path, kept.map((l) => `${l}\n`).join(''));
    }
    this.fd = openSync(path, opts.append ? 'a' : 'w');
    if (opts.append) {
      const size = statSync(path).size;
      if (size > 0) {
        const last = Buffer.alloc(1);
        const rfd = openSync(path, 'r');
        try {
          readSync(rfd, last, 0, 1, size - 1);
        } finally {
          closeSync(rfd);
        }
        if (last[0] !== 0x0a) writeSync(this.fd, '\n');
      }
    }
  }

  log(m: Metrics): void {
    if (this.fd === null) throw new Error(`JsonlSink(${this.path}): log after close`);
    writeSync(this.fd, `${JSON.stringify(m)}\n`);
  }

  async close(): Promise<void> {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

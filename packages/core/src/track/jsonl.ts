import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { QrlhfError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { MetricSink, Metrics } from './sink.js';
import { upgradeMetricRow } from './names.js';

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

/**
 * Reads a metrics.jsonl file into its rows, under today's metric names (a run written with the old
 * flat names is upgraded row by row: names.ts); a line that is not a JSON object is an error naming
 * the file and line.
 */
export function readMetricsFile(path: string): Metrics[] {
  if (!existsSync(path)) throw new QrlhfError(`${path}: no such metrics file`);
  const rows: Metrics[] = [];
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (!line.trim()) return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        row = null;
      }
      if (!row || typeof row !== 'object' || Array.isArray(row)) throw new QrlhfError(`${path}:${i + 1}: not a JSON object`);
      rows.push(upgradeMetricRow(row as Metrics));
    });
  return rows;
}

/** A run folder's metrics.jsonl rows ([] while the run has logged nothing). */
export function readRunMetrics(outDir: string): Metrics[] {
  const p = join(outDir, 'metrics.jsonl');
  return existsSync(p) ? readMetricsFile(p) : [];
}

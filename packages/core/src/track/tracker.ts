import { join } from 'node:path';
import { ConsoleSink, type ConsoleSinkOptions, type ProgressStream } from './console.js';
import { JsonlSink } from './jsonl.js';
import type { MetricSink, Metrics } from './sink.js';
import { WandbSink, type WandbOptions } from './wandb.js';

export interface TrackerOptions {
  /** Run folder: metrics go to DIR/metrics.jsonl. */
  dir?: string;
  /** A progress bar with the latest metrics on stderr. */
  console?: boolean;
  /** W&B, used only when WANDB_API_KEY (or wandb.apiKey) is set. */
  wandb?: ({ project: string; config?: object } & Partial<WandbOptions>) | false;
  /** Total steps, for the progress bar. */
  total?: number;
  label?: string;
  /** Metrics shown on the console (default: the first four numeric ones). */
  keys?: string[];
  /** Append to an existing metrics.jsonl instead of starting afresh. */
  resume?: boolean;
  /** On resume, the rows of the existing metrics.jsonl to keep (e.g. those before the checkpoint's step). */
  keep?: (row: Metrics) => boolean;
  /** Steps already done (resume), for the bar's rate. */
  start?: number;
  /** Console stream (default stderr). */
  stream?: ProgressStream;
  /** Extra sinks of the caller's. */
  sinks?: MetricSink[];
}

/**
 * Fans each row out to the run's sinks: metrics.jsonl in the run folder, the console, W&B, any
 * extra ones. A JSONL failure (disk full) throws: the run's record must not be lost silently. A
 * console or extra sink that throws is dropped with one warning; W&B handles its own failures.
 */
export class Tracker implements MetricSink {
  readonly sinks: MetricSink[];
  readonly jsonl: JsonlSink | null;
  readonly console: ConsoleSink | null;
  readonly wandb: WandbSink | null;

  private constructor(jsonl: JsonlSink | null, console: ConsoleSink | null, wandb: WandbSink | null, extra: MetricSink[]) {
    this.jsonl = jsonl;
    this.console = console;
    this.wandb = wandb;
    this.sinks = [jsonl, console, wandb, ...extra].filter((s): s is MetricSink => s !== null);
  }

  static async create(o: TrackerOptions = {}): Promise<Tracker> {
    const jsonl = o.dir
      ? new JsonlSink(join(o.dir, 'metrics.jsonl'), o.resume ? (o.keep ? { append: true, keep: o.keep } : { append: true }) : {})
      : null;
    // W&B first: its start-up wait must not count in the progress bar's rate (the bar's clock
    // starts when the console sink is made)
    const wandb = o.wandb ? await WandbSink.create(o.wandb) : null;
    if (wandb?.url) process.stderr.write(`qrlhf: wandb run: ${wandb.url}\n`);
    let con: ConsoleSink | null = null;
    if (o.console) {
      const copts: ConsoleSinkOptions = { label: o.label ?? 'train' };
      if (o.total !== undefined) copts.total = o.total;
      if (o.keys) copts.keys = o.keys;
      if (o.stream) copts.stream = o.stream;
      if (o.start !== undefined) copts.start = o.start;
      con = new ConsoleSink(copts);
    }
    return new Tracker(jsonl, con, wandb, o.sinks ?? []);
  }

  log(m: Metrics): void {
    for (const s of [...this.sinks]) {
      if (s === this.jsonl) {
        s.log(m);
        continue;
      }
      try {
        s.log(m);
      } catch (e) {
        this.sinks.splice(this.sinks.indexOf(s), 1);
        process.stderr.write(`qrlhf: warning: a metrics sink failed and was dropped: ${e instanceof Error ? e.message : String(e)}\n`);
      }
    }
  }

  /** A line of text on the console without breaking the progress bar (stderr when no console). */
  println(text: string): void {
    if (this.console) this.console.progress.println(text);
    else process.stderr.write(`${text}\n`);
  }

  /** Closes every sink (W&B bounded by its close timeout); never leaves one open on error. */
  async close(): Promise<void> {
    const results = await Promise.allSettled(this.sinks.map((s) => s.close()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/** A message line for the user: through the tracker (so a progress bar stays intact) or on stderr; nothing when quiet. */
export function printLine(tracker: Tracker | null, text: string, quiet = false): void {
  if (quiet) return;
  if (tracker) tracker.println(text);
  else process.stderr.write(`${text}\n`);
}

import type { MetricSink, Metrics } from './sink.js';

/** A stream Progress can draw on: stderr, or anything with write (and isTTY for a live bar). */
export type ProgressStream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export interface ProgressOptions {
  stream?: ProgressStream;
  /** Minimum time between redraws of the live bar on a terminal (default 100 ms). */
  intervalMs?: number;
  /** Minimum time between plain lines when the stream is not a terminal (default 10 s). */
  plainIntervalMs?: number;
  /** Units done before this run (resume): counted in the bar, not in the rate. */
  start?: number;
  /** The clock, in ms (tests pass a fake one). */
  now?: () => number;
}

/** "1:02:03" or "2:03". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** A metric for a status line: 4 significant digits, exponent form when very small or large. */
export function formatValue(v: number | string | boolean | null): string {
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/**
 * A progress bar for long loops, on stderr by default: "label [####......] 40/100 40% 3.2 it/s
 * ETA 0:19 | info". On a terminal the bar is redrawn in place at most every `intervalMs`; when the
 * stream is not a terminal (a log file, CI) it prints a plain line at most every `plainIntervalMs`,
 * plus the first and the last. The rate counts only the units done since this Progress started.
 */
export class Progress {
  readonly total: number;
  readonly label: string;
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly intervalMs: number;
  private readonly plainIntervalMs: number;
  private readonly now: () => number;
  private readonly t0: number;
  private readonly n0: number;
  private n: number;
  private info = '';
  private lastDraw = -Infinity;
  private drawnOnce = false;
  private finished = false;
  private lineOpen = false;

  constructor(total: number, label: string, opts: ProgressOptions = {}) {
    this.total = total;
    this.label = label;
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    this.intervalMs = opts.intervalMs ?? 100;
    this.plainIntervalMs = opts.plainIntervalMs ?? 10_000;
    this.now = opts.now ?? (() => performance.now());
    this.t0 = this.now();
    this.n0 = opts.start ?? 0;
    this.n = this.n0;
  }

  /** Units done so far. */
  get count(): number {
    return this.n;
  }

  /** Advances by n units (default 1); `info` (e.g. "loss 1.23") replaces the previous info. */
  tick(n = 1, info?: string): void {
    this.update(this.n + n, info);
  }

  /** Sets the number of units done. */
  update(done: number, info?: string): void {
    if (this.finished) return;
    this.n = done;
    if (info !== undefined) this.info = info;
    const t = this.now();
    const every = this.tty ? this.intervalMs : this.plainIntervalMs;
    if (!this.drawnOnce || t - this.lastDraw >= every) this.draw(t);
  }

  /** Prints a line of text without breaking the bar (the bar is redrawn below it on a terminal). */
  println(text: string): void {
    if (this.tty && this.lineOpen) this.stream.write('\r\x1b[K');
    this.stream.write(`${text}\n`);
    this.lineOpen = false;
    if (this.tty && this.drawnOnce && !this.finished) this.draw(this.now());
  }

  /** Draws the final state and ends the line. Idempotent. */
  done(): void {
    if (this.finished) return;
    this.draw(this.now());
    if (this.tty) this.stream.write('\n');
    this.lineOpen = false;
    this.finished = true;
  }

  /** The status line as it would be drawn now (without the bar on a non-terminal). */
  render(t = this.now()): string {
    const elapsed = (t - this.t0) / 1000;
    const doneHere = this.n - this.n0;
    const rate = elapsed > 0 ? doneHere / elapsed : 0;
    const parts: string[] = [this.label];
    if (this.total > 0) {
      const frac = Math.min(1, Math.max(0, this.n / this.total));
      if (this.tty) {
        const width = 24;
        const full = Math.round(frac * width);
        parts.push(`[${'#'.repeat(full)}${'.'.repeat(width - full)}]`);
      }
      parts.push(`${this.n}/${this.total}`, `${Math.floor(frac * 100)}%`);
    } else {
      parts.push(String(this.n));
    }
    parts.push(rate >= 1 || rate === 0 ? `${formatValue(Number(rate.toFixed(2)))} it/s` : `${formatValue(1 / rate)} s/it`);
    if (this.total > 0 && rate > 0 && this.n < this.total) parts.push(`ETA ${formatDuration((this.total - this.n) / rate)}`);
    else parts.push(`elapsed ${formatDuration(elapsed)}`);
    let line = parts.join(' ');
    if (this.info) line += ` | ${this.info}`;
    return line;
  }

  private draw(t: number): void {
    this.lastDraw = t;
    this.drawnOnce = true;
    let line = this.render(t);
    if (this.tty) {
      const cols = this.stream.columns ?? 120;
      if (line.length > cols - 1) line = line.slice(0, Math.max(10, cols - 1));
      this.stream.write(`\r${line}\x1b[K`);
      this.lineOpen = true;
    } else {
      this.stream.write(`${line}\n`);
    }
  }
}

export interface ConsoleSinkOptions {
  /** Metrics shown after the bar (default: the first four numeric keys seen, besides step). */
  keys?: string[];
  /** Total steps, for the bar and the ETA (0 or absent: no bar). */
  total?: number;
  label?: string;
  stream?: ProgressStream;
  /** Steps done before this run (resume). */
  start?: number;
  intervalMs?: number;
  plainIntervalMs?: number;
  now?: () => number;
}

/**
 * Metrics on the console through a Progress bar: the row's `step` (when a number) positions the
 * bar, and the chosen keys' latest values (kept across rows, so an eval row's eval_loss stays
 * shown) make its info.
 */
export class ConsoleSink implements MetricSink {
  readonly progress: Progress;
  private keys: string[] | null;
  private readonly latest = new Map<string, number | string | boolean | null>();

  constructor(opts: ConsoleSinkOptions = {}) {
    this.keys = opts.keys ?? null;
    const popts: ProgressOptions = {};
    if (opts.stream) popts.stream = opts.stream;
    if (opts.start !== undefined) popts.start = opts.start;
    if (opts.intervalMs !== undefined) popts.intervalMs = opts.intervalMs;
    if (opts.plainIntervalMs !== undefined) popts.plainIntervalMs = opts.plainIntervalMs;
    if (opts.now) popts.now = opts.now;
    this.progress = new Progress(opts.total ?? 0, opts.label ?? 'train', popts);
  }

  log(m: Metrics): void {
    if (this.keys === null) this.keys = Object.keys(m).filter((k) => k !== 'step' && typeof m[k] === 'number').slice(0, 4);
    for (const k of this.keys) if (k in m) this.latest.set(k, m[k]!);
    const info = this.keys
      .filter((k) => this.latest.has(k))
      .map((k) => `${k} ${formatValue(this.latest.get(k)!)}`)
      .join(' ');
    const step = m['step'];
    if (typeof step === 'number') this.progress.update(step, info);
    else this.progress.update(this.progress.count, info);
  }

  async close(): Promise<void> {
    this.progress.done();
  }
}

import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import type { MetricSink, Metrics } from './sink.js';

export interface WandbOptions {
  project: string;
  config?: object;
  name?: string;
  entity?: string;
  /** Default: $WANDB_API_KEY. Without a key the sink is not created (create returns null, silently). */
  apiKey?: string;
  /** Default: $WANDB_BASE_URL, else the SDK's https://api.wandb.ai. */
  baseUrl?: string;
  /** Bound on wandb.init (default 15 s). */
  timeoutMs?: number;
  /** Bound on any single upload while the run goes on (default 60 s). */
  flushTimeoutMs?: number;
  /** Bound on close(), the final upload (default 15 s). */
  closeTimeoutMs?: number;
  /** Where the one warning goes (default: a line on stderr). */
  warn?: (message: string) => void;
}

/*
 * The SDK runs in a worker thread of its own, fed by postMessage. That is what makes the sink
 * unable to stall or kill the run:
 * - nothing the SDK does (sockets that never answer, retries with 30 s back-offs, its habit of
 *   throwing from a message listener on a failed request, its beforeExit/SIGINT/SIGTERM handlers)
 *   touches the main thread, whose `log` is a postMessage that returns at once;
 * - every wait on the SDK is bounded (init, each upload through a watchdog, close), and on
 *   failure or time-out the worker is terminated, which drops its sockets: the run goes on and the
 *   process can exit. The worker is unref'd so it never holds the process open.
 * The watchdog wraps the SDK's FileStream.send (@wandb/sdk 0.5 internals); if a later SDK moves
 * it, the watchdog is off and only init and close are bounded (the main thread is still never
 * blocked).
 */
const WORKER_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const post = (m) => parentPort.postMessage(m);
const msgOf = (e) => (e && e.message) ? e.message : String(e);
process.on('uncaughtException', (e) => post({ type: 'fatal', message: msgOf(e) }));
process.on('unhandledRejection', (e) => post({ type: 'fatal', message: msgOf(e) }));
(async () => {
  let run;
  let inflightSince = 0;
  try {
    const mod = await import(workerData.sdkUrl);
    const wandb = mod.default || mod.wandb;
    const settings = { apiKey: workerData.apiKey };
    if (workerData.baseUrl) settings.baseUrl = workerData.baseUrl;
    const opts = { project: workerData.project, config: workerData.config, settings };
    if (workerData.name) opts.name = workerData.name;
    if (workerData.entity) opts.entity = workerData.entity;
    run = await wandb.init(opts);
    const fs = run && run._messenger && run._messenger.sender && run._messenger.sender.filestream;
    let watchdog = false;
    if (fs && typeof fs.send === 'function') {
      const send = fs.send.bind(fs);
      fs.send = async (d) => {
        inflightSince = Date.now();
        try { return await send(d); } finally { inflightSince = 0; }
      };
      watchdog = true;
    }
    post({ type: 'ready', url: typeof run.url === 'function' ? run.url() : '', watchdog });
  } catch (e) {
    post({ type: 'fatal', message: msgOf(e) });
    return;
  }
  const beat = setInterval(() => post({ type: 'beat', inflightMs: inflightSince ? Date.now() - inflightSince : 0 }), 250);
  parentPort.on('message', (msg) => {
    if (msg.type === 'log') {
      try { run.log(msg.data, msg.step); } catch (e) { post({ type: 'fatal', message: msgOf(e) }); }
    } else if (msg.type === 'finish') {
      clearInterval(beat);
      run.finish(0).then(() => post({ type: 'finished' }), (e) => post({ type: 'fatal', message: msgOf(e) }));
    }
  });
})();
`;

type FromWorker =
  | { type: 'ready'; url: string; watchdog: boolean }
  | { type: 'fatal'; message: string }
  | { type: 'beat'; inflightMs: number }
  | { type: 'finished' };

/** The SDK's ESM entry (its `require` entry is a different build). */
function resolveSdk(): string {
  try {
    return import.meta.resolve('@wandb/sdk');
  } catch {
    // no import.meta.resolve (older runtimes): the package's folder, then its ESM index.js
    const cjs = createRequire(import.meta.url).resolve('@wandb/sdk');
    return pathToFileURL(cjs.replace(/index\.cjs$/, 'index.js')).href;
  }
}

function defaultWarn(message: string): void {
  process.stderr.write(`qrlhf: warning: ${message}\n`);
}

/** The SDK's own chatter (it prints errors and "View run at" itself), kept short for the warning. */
class Tail {
  private text = '';
  add(chunk: Buffer | string): void {
    this.text = (this.text + chunk.toString()).slice(-2000);
  }
  lastLine(): string {
    const lines = this.text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
    return lines.length ? lines[lines.length - 1]!.slice(0, 300) : '';
  }
}

/**
 * Metrics to Weights & Biases through @wandb/sdk, such that W&B can never stall or kill the run:
 * a failure or a time-out gives ONE warning and the sink disables itself (later `log`s are no-ops)
 * while the other sinks go on. Create it with `WandbSink.create`, which resolves to null (after the
 * warning) when init fails or takes longer than `timeoutMs`, and to null silently without an API key.
 */
export class WandbSink implements MetricSink {
  /** The run's page, as the SDK reports it. */
  readonly url: string;
  private disabled = false;
  private closed = false;
  private readonly listeners = new Set<(m: FromWorker) => void>();

  private constructor(
    private readonly worker: Worker,
    url: string,
    private readonly warn: (message: string) => void,
    private readonly flushTimeoutMs: number,
    private readonly closeTimeoutMs: number,
    private readonly tail: Tail,
  ) {
    this.url = url;
    worker.on('message', (m: FromWorker) => {
      for (const l of this.listeners) l(m);
      if (m.type === 'fatal') this.disable(`W&B failed (${m.message})`);
      else if (m.type === 'beat' && m.inflightMs > this.flushTimeoutMs) {
        this.disable(`an upload to W&B has been pending for over ${Math.round(this.flushTimeoutMs / 1000)} s`);
      }
    });
    worker.on('error', (e) => this.disable(`W&B failed (${e.message})`));
    worker.on('exit', () => {
      if (!this.closed) this.disable('the W&B worker stopped');
    });
  }

  /** True once the sink has given up (after its warning) or been closed. */
  get active(): boolean {
    return !this.disabled && !this.closed;
  }

  static async create(opts: WandbOptions): Promise<WandbSink | null> {
    const apiKey = opts.apiKey ?? process.env['WANDB_API_KEY'];
    if (!apiKey) return null;
    const warn = opts.warn ?? defaultWarn;
    const timeoutMs = opts.timeoutMs ?? 15_000;
    let sdkUrl: string;
    try {
      sdkUrl = resolveSdk();
    } catch (e) {
      warn(`wandb disabled: @wandb/sdk is not installed (${e instanceof Error ? e.message : String(e)}); the run goes on without it`);
      return null;
    }
    const baseUrl = opts.baseUrl ?? process.env['WANDB_BASE_URL'];
    const tail = new Tail();
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      execArgv: [],
      stdout: true,
      stderr: true,
      workerData: {
        sdkUrl,
        apiKey,
        baseUrl: baseUrl ?? null,
        project: opts.project,
        name: opts.name ?? null,
        entity: opts.entity ?? null,
        config: JSON.parse(JSON.stringify(opts.config ?? {})) as unknown,
      },
    });
    worker.unref();
    worker.stdout.on('data', (c: Buffer) => tail.add(c));
    worker.stderr.on('data', (c: Buffer) => tail.add(c));

    const outcome = await new Promise<{ ok: true; url: string } | { ok: false; why: string }>((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, why: `no answer from ${baseUrl ?? 'api.wandb.ai'} within ${timeoutMs / 1000} s` }), timeoutMs);
      const done = (r: { ok: true; url: string } | { ok: false; why: string }): void => {
        clearTimeout(timer);
        worker.removeAllListeners('message');
        worker.removeAllListeners('error');
        worker.removeAllListeners('exit');
        resolve(r);
      };
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') done({ ok: true, url: m.url });
        else if (m.type === 'fatal') done({ ok: false, why: m.message });
      });
      worker.on('error', (e) => done({ ok: false, why: e.message }));
      worker.on('exit', (code) => done({ ok: false, why: `worker exited (${code})` }));
    });
    if (!outcome.ok) {
      void worker.terminate().catch(() => undefined);
      const said = tail.lastLine();
      warn(`wandb disabled: init failed: ${outcome.why}${said ? ` [sdk: ${said}]` : ''}; the run goes on without it`);
      return null;
    }
    return new WandbSink(worker, outcome.url, warn, opts.flushTimeoutMs ?? 60_000, opts.closeTimeoutMs ?? 15_000, tail);
  }

  log(m: Metrics): void {
    if (!this.active) return;
    const step = m['step'];
    this.worker.postMessage({ type: 'log', data: { ...m }, step: typeof step === 'number' && Number.isInteger(step) && step >= 0 ? step : undefined });
  }

  /** Uploads what is left and ends the W&B run, waiting at most closeTimeoutMs. Never throws. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.disabled) {
      this.closed = true;
      return;
    }
    const result = await new Promise<'finished' | 'timeout' | 'failed'>((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), this.closeTimeoutMs);
      const l = (m: FromWorker): void => {
        if (m.type === 'finished' || m.type === 'fatal') {
          clearTimeout(timer);
          this.listeners.delete(l);
          resolve(m.type === 'finished' ? 'finished' : 'failed');
        }
      };
      this.listeners.add(l);
      this.worker.postMessage({ type: 'finish' });
    });
    if (result === 'timeout') {
      this.disable(`closing the W&B run took over ${this.closeTimeoutMs / 1000} s; the last metrics may not have been uploaded`);
    }
    this.closed = true;
    await this.worker.terminate().catch(() => undefined);
  }

  private disable(why: string): void {
    if (this.disabled || this.closed) return;
    this.disabled = true;
    const said = this.tail.lastLine();
    this.warn(`wandb disabled: ${why}${said ? ` [sdk: ${said}]` : ''}; the run goes on with the other sinks`);
    void this.worker.terminate().catch(() => undefined);
  }
}

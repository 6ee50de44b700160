/**
 * The HTTP side of an inference engine (an OpenAI-compatible server such as vLLM or `qrlhf serve`):
 * one JSON POST/GET with a timeout over keep-alive sockets, and a pool of servers that shares a
 * batch of requests among them, moves the requests of a server that fails onto the others, and
 * gives up with one clear error when every server has failed `retries` times in a row.
 *
 * Why here: rollouts (@qrlhf/rloo) and features (@qrlhf/qrm) both reach engines, and both stand on
 * core. Only Node's http/https modules: no client library.
 */
import http from 'node:http';
import https from 'node:https';
import { QrlhfError } from '../errors.js';

/** An answer with a non-2xx status; `body` is the server's text (a JSON error, usually). */
export class EngineHttpError extends Error {
  constructor(
    readonly url: string,
    readonly status: number,
    readonly body: string,
  ) {
    super(`${url}: HTTP ${status}: ${body.slice(0, 300)}`);
  }
}

const agents = { http: new http.Agent({ keepAlive: true, maxSockets: 64 }), https: new https.Agent({ keepAlive: true, maxSockets: 64 }) };

export interface RequestOptions {
  timeoutMs: number;
  apiKey?: string | null;
}

/** One request: JSON in (POST when body is given, else GET), JSON out. Network faults reject with Node's error (its `code`). */
export function requestJson(url: string, body: unknown, o: RequestOptions): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const lib = u.protocol === 'https:' ? https : http;
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (data) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = data.length;
    }
    if (o.apiKey) headers['authorization'] = `Bearer ${o.apiKey}`;
    const req = lib.request(
      u,
      { method: data ? 'POST' : 'GET', headers, agent: u.protocol === 'https:' ? agents.https : agents.http },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status < 200 || status >= 300) return reject(new EngineHttpError(url, status, text));
          if (text.trim() === '') return resolve(null);
          try {
            resolve(JSON.parse(text));
          } catch {
            // vLLM answers load_lora_adapter with plain text ("Success: LoRA adapter ... added")
            resolve(text);
          }
        });
      },
    );
    req.setTimeout(o.timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${o.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', reject);
    req.end(data ?? undefined);
  });
}

/** What went wrong with one request, in a few words (for messages). */
export function describeFailure(e: unknown): string {
  if (e instanceof EngineHttpError) return `HTTP ${e.status} ${e.body.slice(0, 160).replace(/\s+/g, ' ')}`;
  const err = e as { code?: string; message?: string };
  return err.code ?? err.message ?? String(e);
}

/**
 * Whether another server (or the same one, later) may succeed: network faults, timeouts, 5xx,
 * 404/405 (a restarted server that lost the adapter, or a missing route), 429. Other 4xx mean the
 * request itself is wrong, and repeating it cannot help.
 */
export function isRetryable(e: unknown): boolean {
  if (e instanceof EngineHttpError) return e.status >= 500 || e.status === 404 || e.status === 405 || e.status === 408 || e.status === 429;
  return e instanceof Error && !(e instanceof QrlhfError);
}

export interface PoolOptions {
  /** Base URLs, each ending in /v1 (a trailing slash is dropped). */
  baseUrls: string[];
  /** Requests in flight per server. */
  concurrency: number;
  timeoutMs: number;
  /** Failed attempts a request may have before the whole batch fails. */
  retries: number;
  /** First wait when every server has failed; it doubles each time. */
  backoffMs: number;
  apiKey?: string | null;
  /** What the pool serves, for messages ("rollouts", "features"). */
  label?: string;
  /** Told of every failed attempt that will be retried (server URL, what went wrong). */
  onRetry?: (url: string, error: string) => void;
}

export interface EngineServer {
  readonly url: string;
  /** Failed in this batch: it gets no more requests until the next batch (or every server failed). */
  down: boolean;
  /** The last failure, for messages. */
  lastError: string | null;
  /** Caller's state per server (e.g. which adapter version it holds). */
  state: Record<string, unknown>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class EnginePool {
  readonly servers: EngineServer[];
  readonly opts: PoolOptions;

  constructor(o: PoolOptions) {
    if (o.baseUrls.length === 0) throw new QrlhfError('engine: no server URL given (engine.baseUrl or engine.baseUrls)');
    for (const u of o.baseUrls) {
      let p: URL;
      try {
        p = new URL(u);
      } catch {
        throw new QrlhfError(`engine: "${u}" is not a URL (expected e.g. http://127.0.0.1:8000/v1)`);
      }
      if (p.protocol !== 'http:' && p.protocol !== 'https:') throw new QrlhfError(`engine: "${u}" must be an http:// or https:// URL`);
    }
    if (!(o.concurrency >= 1)) throw new QrlhfError(`engine: concurrency must be >= 1, got ${o.concurrency}`);
    this.opts = { ...o };
    this.servers = o.baseUrls.map((u) => ({ url: u.replace(/\/+$/, ''), down: false, lastError: null, state: {} }));
  }

  /** One request to one server; `path` is appended to its base URL. */
  request(server: EngineServer, path: string, body?: unknown): Promise<unknown> {
    return requestJson(server.url + path, body, { timeoutMs: this.opts.timeoutMs, apiKey: this.opts.apiKey ?? null });
  }

  /**
   * Runs every task, each on some server, at most `concurrency` at a time per server; results in
   * task order. A task that fails in a retryable way marks its server down for the rest of this
   * batch and goes back in the queue for the others; when all are down, the pool waits (backoff,
   * doubling) and tries them all again. A task that has failed `retries` times, or fails in a way
   * no retry can fix, fails the batch with one QrlhfError naming every server and its last error.
   */
  async run<T>(tasks: ((server: EngineServer) => Promise<T>)[]): Promise<T[]> {
    const results = new Array<T>(tasks.length);
    const queue = tasks.map((_, i) => i);
    const failures = new Array<number>(tasks.length).fill(0);
    let fatal: unknown = null;
    let backoff = this.opts.backoffMs;
    for (const s of this.servers) s.down = false;
    const worker = async (s: EngineServer) => {
      while (!fatal && !s.down && queue.length > 0) {
        const i = queue.shift()!;
        try {
          results[i] = await tasks[i]!(s);
        } catch (e) {
          s.lastError = describeFailure(e);
          if (!isRetryable(e)) {
            fatal ??= e instanceof QrlhfError ? e : new QrlhfError(`engine ${s.url}: ${describeFailure(e)} (a request no retry can fix)`);
            return;
          }
          failures[i]!++;
          if (failures[i]! > this.opts.retries) {
            fatal ??= this.giveUp(failures[i]!);
            return;
          }
          queue.push(i);
          this.opts.onRetry?.(s.url, s.lastError);
          // a 404 after a restart is the server's fault only until its state is rebuilt: keep it up
          if (!(e instanceof EngineHttpError && e.status === 404)) s.down = true;
          s.state = {};
        }
      }
    };
    while (queue.length > 0 && !fatal) {
      let live = this.servers.filter((s) => !s.down);
      if (live.length === 0) {
        await sleep(backoff);
        backoff *= 2;
        for (const s of this.servers) s.down = false;
        live = this.servers;
      }
      await Promise.all(live.flatMap((s) => Array.from({ length: this.opts.concurrency }, () => worker(s))));
    }
    if (fatal) throw fatal;
    return results;
  }

  private giveUp(attempts: number): QrlhfError {
    const who = this.servers.map((s) => `${s.url} (${s.lastError ?? 'no error'})`).join('; ');
    return new QrlhfError(`engine: ${this.opts.label ?? 'a request'} failed ${attempts} times across ${this.servers.length} server(s): ${who}`);
  }
}

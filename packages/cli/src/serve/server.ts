/**
 * `qrlhf serve`: an HTTP server on Node's http module that speaks the subset of the OpenAI /
 * vLLM API qrlhf's engines use, for a model folder, and serves a quantile reward model:
 *
 *   GET  /v1/models                 the base model and every loaded adapter
 *   POST /v1/completions            prompt (text or token ids, one or a list), n, max_tokens,
 *                                   temperature, top_p, top_k, seed, stop_token_ids → choices with
 *                                   text, token_ids (EOS included when drawn), finish_reason
 *   POST /v1/embeddings             input (text or token ids, one or a list) → the final-norm hidden
 *                                   state at the last token (last-token pooling, no normalisation)
 *   POST /v1/load_lora_adapter      {lora_name, lora_path, load_inplace?}: a PEFT adapter folder
 *   POST /v1/unload_lora_adapter    {lora_name}
 *   POST /v1/reward                 (--qrm) {prompts, responses, utility?, lambda?, alpha?} → per
 *                                   response the K quantiles, expectation, utility, gate weights
 *   POST /get_reward                (--qrm) OpenRLHF's remote reward protocol: {query: [full
 *                                   texts], prompts?: [...]} → {rewards, scores, extra_logs}, the
 *                                   utility fixed at start (--utility, --lambda, --alpha)
 *
 * Sampling: row j of a request seeded s draws from Rng(`${s}:${j}`) (rowRng), exactly as the local
 * rollout engine does, so a rollout served here equals the in-process one. Completion requests
 * that arrive while the model is busy are batched into one generate() call per adapter.
 *
 * Errors: a bad request gets a 4xx with {error: {message, type, param, code}} naming the field; an
 * internal fault a 500; the server itself never stops on a request.
 */
import http from 'node:http';
import { basename, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  MODEL_FIELDS,
  QrlhfError,
  RUN_FIELDS,
  Rng,
  defineConfig,
  generate,
  initBackend,
  loadLoraAdapter,
  loadModel,
  type BackendName,
  type ConfigOf,
  type LlamaModel,
  type LoraAdapter,
  type Tokenizer,
} from '@qrlhf/core';
import { BUILTIN_UTILITIES, QuantileRewardModel, makeUtility, type Utility } from '@qrlhf/qrm';
import { rowRng } from '@qrlhf/rloo';

export const SERVE_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'model folder to serve for /v1/completions and /v1/embeddings (Hugging Face layout or llama2.c .bin)' },
  servedModelName: { type: 'string', default: null, nullable: true, doc: "the model's id in requests (null = the folder's name)" },
  ...MODEL_FIELDS,
  qrm: { type: 'string', default: null, nullable: true, path: true, doc: 'quantile reward model folder: enables POST /v1/reward and POST /get_reward' },
  utility: { type: 'string', default: 'expectation', choices: BUILTIN_UTILITIES, doc: "/get_reward's utility of the quantiles (and /v1/reward's default)" },
  lambda: { type: 'number', default: 1, min: 0, doc: 'risk aversion of exponential / certainty-equivalent' },
  alpha: { type: 'number', default: 0.25, min: 0, max: 1, doc: 'tail level of cvar' },
  host: { type: 'string', default: '127.0.0.1', doc: 'address to listen on (0.0.0.0 = every interface)' },
  port: { type: 'int', default: 8000, min: 0, max: 65535, doc: 'port (0 = any free one; the chosen one is printed)' },
  ...RUN_FIELDS,
  maxBatchRows: { type: 'int', default: 64, min: 1, doc: 'completion rows decoded together in one generate call' },
  rewardBatchSize: { type: 'int', default: 8, min: 1, doc: "sequences per forward pass of the QRM's backbone" },
  maxBodyBytes: { type: 'int', default: 64 * 1024 * 1024, min: 1024, doc: 'largest request body accepted (413 above it)' },
});
export type ServeConfig = ConfigOf<typeof SERVE_SCHEMA>;

/** A request fault: status, the field it names, a message. */
class BadRequest extends Error {
  constructor(
    readonly status: number,
    readonly param: string | null,
    message: string,
  ) {
    super(message);
  }
}
const bad = (param: string, msg: string, status = 400) => new BadRequest(status, param, `${param}: ${msg}`);

type Json = Record<string, unknown>;

function obj(body: unknown): Json {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw bad('body', 'expected a JSON object');
  return body as Json;
}
function intField(o: Json, key: string, dflt: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key] ?? dflt;
  if (v === undefined) throw bad(key, 'is required');
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(key, `expected an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}
function numField(o: Json, key: string, dflt: number, min: number, max: number): number {
  const v = o[key] ?? dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw bad(key, `expected a number in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}
function strList(o: Json, key: string, required: boolean): string[] | null {
  const v = o[key];
  if (v === undefined || v === null) {
    if (required) throw bad(key, 'is required (a list of strings)');
    return null;
  }
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw bad(key, 'expected a list of strings');
  return v as string[];
}

/** prompt / input: a string, a list of strings, a list of token ids, or a list of such lists → token id lists. */
function tokenInputs(v: unknown, key: string, tok: Tokenizer, vocab: number): number[][] {
  const isIds = (x: unknown): x is number[] => Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === 'number');
  let list: (string | number[])[];
  if (typeof v === 'string') list = [v];
  else if (isIds(v)) list = [v];
  else if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string' || isIds(x))) list = v as (string | number[])[];
  else throw bad(key, 'expected a string, a list of strings, a list of token ids or a list of such lists (none empty)');
  return list.map((x, i) => {
    const ids = typeof x === 'string' ? tok.encode(x, { addBos: true }) : x;
    const badAt = ids.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
    if (badAt >= 0) throw bad(`${key}[${i}]`, `token ${ids[badAt]} at position ${badAt} is not an id below the vocabulary size ${vocab}`);
    if (ids.length === 0) throw bad(`${key}[${i}]`, 'is empty');
    return ids;
  });
}

interface CompletionJob {
  adapter: string | null;
  prompts: number[][];
  n: number;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  eos: number[];
  resolve: (r: { tokens: number[][]; eos: boolean[] }) => void;
  reject: (e: unknown) => void;
}

export interface RunningServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Loads what the config names and listens; resolves once listening. */
export async function startServer(cfg: ServeConfig, log: (line: string) => void = () => {}): Promise<RunningServer> {
  if (!cfg.model && !cfg.qrm) throw new QrlhfError('serve: give a model folder (--model) or a QRM folder (--qrm), or both');
  await initBackend(cfg.backend as BackendName, { quiet: true });
  let model: LlamaModel | null = null;
  let tok: Tokenizer | null = null;
  let name = '';
  if (cfg.model) {
    const loaded = await loadModel(resolve(cfg.model), cfg.tokenizer ? { tokenizer: resolve(cfg.tokenizer) } : {});
    if (loaded.model.lora) throw new QrlhfError(`${cfg.model}: the model carries a LoRA adapter; serve the merged folder and load adapters at run time`);
    model = loaded.model;
    tok = loaded.tokenizer;
    name = cfg.servedModelName ?? basename(resolve(cfg.model)).replace(/\.bin$/, '');
  }
  const qrm = cfg.qrm ? await QuantileRewardModel.load(resolve(cfg.qrm)) : null;
  const fixedUtility = await makeUtility({ name: cfg.utility, lambda: cfg.lambda, alpha: cfg.alpha });
  const adapters = new Map<string, { adapter: LoraAdapter; path: string }>();
  const created = Math.floor(Date.now() / 1000);

  // ---- completions: a queue drained one generate() per adapter at a time
  const queue: CompletionJob[] = [];
  let draining = false;
  const drain = () => {
    if (draining) return;
    draining = true;
    setImmediate(async () => {
      try {
        while (queue.length > 0) {
          const first = queue[0]!;
          const jobs: CompletionJob[] = [];
          let rowsN = 0;
          const same = (j: CompletionJob) =>
            j.adapter === first.adapter && j.maxTokens === first.maxTokens && j.temperature === first.temperature &&
            j.topP === first.topP && j.topK === first.topK && j.eos.join() === first.eos.join();
          for (let i = 0; i < queue.length; ) {
            const j = queue[i]!;
            const r = j.prompts.length * j.n;
            if (same(j) && (jobs.length === 0 || rowsN + r <= cfg.maxBatchRows)) {
              jobs.push(j);
              rowsN += r;
              queue.splice(i, 1);
            } else i++;
          }
          await runJobs(jobs);
        }
      } finally {
        draining = false;
      }
    });
  };
  const runJobs = async (jobs: CompletionJob[]) => {
    const first = jobs[0]!;
    const rows: number[][] = [];
    const rngs: Rng[] = [];
    for (const j of jobs) {
      j.prompts.forEach((p, pi) => {
        for (let c = 0; c < j.n; c++) {
          rows.push(p);
          rngs.push(rowRng(j.seed, pi * j.n + c));
        }
      });
    }
    try {
      const m = model!;
      m.lora = first.adapter ? adapters.get(first.adapter)?.adapter ?? null : null;
      if (first.adapter && !m.lora) throw bad('model', `adapter "${first.adapter}" was unloaded`, 404);
      const g =
        first.maxTokens === 0
          ? { tokens: rows.map(() => []), finishedWithEos: rows.map(() => false) }
          : await generate(m, rows, {
              maxNewTokens: first.maxTokens,
              temperature: first.temperature,
              ...(first.topP < 1 ? { topP: first.topP } : {}),
              ...(first.topK > 0 ? { topK: first.topK } : {}),
              eosTokenId: first.eos,
              rng: rngs[0]!,
              rowRngs: rngs,
            });
      let at = 0;
      for (const j of jobs) {
        const r = j.prompts.length * j.n;
        j.resolve({ tokens: g.tokens.slice(at, at + r), eos: g.finishedWithEos.slice(at, at + r) });
        at += r;
      }
    } catch (e) {
      for (const j of jobs) j.reject(e);
    } finally {
      if (model) model.lora = null;
    }
  };

  const needModel = (): LlamaModel => {
    if (!model || !tok) throw bad('model', 'this server has no model (started with --qrm only)', 404);
    return model;
  };
  const adapterOf = (o: Json): string | null => {
    const m = o['model'];
    if (m === undefined || m === null || m === name) return null;
    if (typeof m !== 'string') throw bad('model', 'expected a string');
    if (!adapters.has(m)) throw bad('model', `the model "${m}" does not exist (served: ${[name, ...adapters.keys()].join(', ')})`, 404);
    return m;
  };

  async function completions(o: Json): Promise<Json> {
    const m = needModel();
    const adapter = adapterOf(o);
    const prompts = tokenInputs(o['prompt'], 'prompt', tok!, m.config.vocabSize);
    const n = intField(o, 'n', 1, 1, 256);
    const maxTokens = intField(o, 'max_tokens', 16, 0, m.config.maxPositionEmbeddings);
    const temperature = numField(o, 'temperature', 1, 0, 100);
    const topP = numField(o, 'top_p', 1, Number.MIN_VALUE, 1);
    const topKRaw = o['top_k'] ?? -1;
    if (typeof topKRaw !== 'number' || !Number.isInteger(topKRaw) || topKRaw < -1) throw bad('top_k', `expected an integer >= -1 (-1 or 0 = off), got ${JSON.stringify(topKRaw)}`);
    const seed = o['seed'] === undefined || o['seed'] === null ? Math.floor(Math.random() * 2 ** 32) : intField(o, 'seed', undefined, 0);
    const stopIds = o['stop_token_ids'] ?? [];
    if (!Array.isArray(stopIds) || stopIds.some((t) => !Number.isInteger(t) || (t as number) < 0)) throw bad('stop_token_ids', 'expected a list of token ids');
    const stop = o['stop'];
    if (stop !== undefined && stop !== null && !(Array.isArray(stop) && stop.length === 0)) throw bad('stop', 'stop strings are not supported by qrlhf serve (use stop_token_ids)');
    if (o['stream'] === true) throw bad('stream', 'streaming is not supported by qrlhf serve');
    for (const [i, p] of prompts.entries()) {
      if (p.length + maxTokens > m.config.maxPositionEmbeddings) {
        throw bad(`prompt[${i}]`, `${p.length} tokens + max_tokens ${maxTokens} exceed the model's ${m.config.maxPositionEmbeddings}-token context`);
      }
    }
    const eos = [...new Set([m.config.eosTokenId, ...(stopIds as number[])])];
    const out = await new Promise<{ tokens: number[][]; eos: boolean[] }>((res, rej) => {
      queue.push({ adapter, prompts, n, maxTokens, temperature, topP, topK: topKRaw > 0 ? topKRaw : 0, seed, eos, resolve: res, reject: rej });
      drain();
    });
    const eosSet = new Set(eos);
    const choices = out.tokens.map((t, i) => ({
      index: i,
      text: tok!.decode(t.length && eosSet.has(t[t.length - 1]!) ? t.slice(0, -1) : t, { skipSpecial: true }),
      token_ids: t,
      logprobs: null,
      finish_reason: out.eos[i] ? 'stop' : 'length',
    }));
    const completion = out.tokens.reduce((a, t) => a + t.length, 0);
    const promptTokens = prompts.reduce((a, p) => a + p.length, 0);
    return {
      id: `cmpl-${seed.toString(16)}-${Date.now().toString(36)}`,
      object: 'text_completion',
      created: Math.floor(Date.now() / 1000),
      model: adapter ?? name,
      choices,
      usage: { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion },
    };
  }

  async function embeddings(o: Json): Promise<Json> {
    const m = needModel();
    const adapter = adapterOf(o);
    const inputs = tokenInputs(o['input'], 'input', tok!, m.config.vocabSize);
    if (o['encoding_format'] !== undefined && o['encoding_format'] !== 'float') throw bad('encoding_format', 'only "float" is supported');
    inputs.forEach((p, i) => {
      if (p.length > m.config.maxPositionEmbeddings) throw bad(`input[${i}]`, `${p.length} tokens exceed the model's ${m.config.maxPositionEmbeddings}-token context`);
    });
    const d = m.config.hiddenSize;
    const out: number[][] = new Array<number[]>(inputs.length);
    const order = inputs.map((_, i) => i).sort((a, b) => inputs[a]!.length - inputs[b]!.length);
    const pad = m.config.padTokenId ?? m.config.eosTokenId;
    m.lora = adapter ? adapters.get(adapter)!.adapter : null;
    try {
      for (let s = 0; s < order.length; s += 8) {
        const rows = order.slice(s, s + 8);
        const B = rows.length;
        const T = Math.max(...rows.map((r) => inputs[r]!.length));
        const ids = new Int32Array(B * T).fill(pad);
        const mask = new Float32Array(B * T);
        const last = new Int32Array(B);
        rows.forEach((r, b) => {
          ids.set(inputs[r]!, b * T);
          mask.fill(1, b * T, b * T + inputs[r]!.length);
          last[b] = b * T + inputs[r]!.length - 1;
        });
        const h = tf.tidy(() => tf.gather(m.hidden(tf.tensor2d(ids, [B, T], 'int32'), { mask: tf.tensor2d(mask, [B, T]) }).reshape([B * T, d]), tf.tensor1d(last, 'int32')));
        const data = (await h.data()) as Float32Array;
        h.dispose();
        rows.forEach((r, b) => (out[r] = Array.from(data.subarray(b * d, (b + 1) * d))));
      }
    } finally {
      m.lora = null;
    }
    const total = inputs.reduce((a, p) => a + p.length, 0);
    return {
      object: 'list',
      data: out.map((embedding, index) => ({ object: 'embedding', index, embedding })),
      model: adapter ?? name,
      usage: { prompt_tokens: total, total_tokens: total },
    };
  }

  function loadAdapter(o: Json): string {
    const m = needModel();
    const loraName = o['lora_name'];
    const loraPath = o['lora_path'];
    if (typeof loraName !== 'string' || loraName === '') throw bad('lora_name', 'expected a non-empty string');
    if (typeof loraPath !== 'string' || loraPath === '') throw bad('lora_path', 'expected the path of a PEFT adapter folder');
    if (loraName === name) throw bad('lora_name', `"${loraName}" is the base model's name`);
    const inplace = o['load_inplace'] === true;
    const old = adapters.get(loraName);
    if (old && !inplace) throw bad('lora_name', `the adapter "${loraName}" is already loaded (send load_inplace: true to replace it)`);
    m.lora = null;
    let a: LoraAdapter;
    try {
      a = loadLoraAdapter(resolve(loraPath), m);
    } catch (e) {
      if (e instanceof QrlhfError) throw bad('lora_path', e.message);
      throw e;
    } finally {
      m.lora = null;
    }
    adapters.set(loraName, { adapter: a, path: resolve(loraPath) });
    old?.adapter.dispose();
    return `Success: LoRA adapter '${loraName}' added successfully.`;
  }

  function unloadAdapter(o: Json): string {
    const loraName = o['lora_name'];
    if (typeof loraName !== 'string') throw bad('lora_name', 'expected a string');
    const a = adapters.get(loraName);
    if (!a) throw bad('lora_name', `no adapter "${loraName}" is loaded`, 404);
    adapters.delete(loraName);
    a.adapter.dispose();
    return `Success: LoRA adapter '${loraName}' removed successfully.`;
  }

  const needQrm = (): QuantileRewardModel => {
    if (!qrm) throw bad('url', 'this server has no reward model (start it with --qrm DIR)', 404);
    return qrm;
  };
  const taus = () => Array.from(needQrm().taus);

  async function reward(o: Json): Promise<Json> {
    const q = needQrm();
    const prompts = strList(o, 'prompts', true)!;
    const responses = strList(o, 'responses', true)!;
    if (prompts.length !== responses.length) throw bad('responses', `${responses.length} responses for ${prompts.length} prompts (one each)`);
    let utility: Utility = fixedUtility;
    let uname = cfg.utility;
    if (o['utility'] !== undefined || o['lambda'] !== undefined || o['alpha'] !== undefined) {
      const u = o['utility'] ?? cfg.utility;
      if (typeof u !== 'string' || !(BUILTIN_UTILITIES as readonly string[]).includes(u)) throw bad('utility', `expected one of ${BUILTIN_UTILITIES.join(', ')}, got ${JSON.stringify(u)}`);
      const lambda = numField(o, 'lambda', cfg.lambda, 0, 1e6);
      const alpha = numField(o, 'alpha', cfg.alpha, 0, 1);
      if ((u === 'exponential' || u === 'certainty-equivalent') && !(lambda > 0)) throw bad('lambda', `must be > 0 for ${u}`);
      utility = await makeUtility({ name: u, lambda, alpha });
      uname = u as typeof uname;
    }
    const scores = await q.score(prompts.map((p, i) => ({ prompt: p, response: responses[i]! })), { batchSize: cfg.rewardBatchSize });
    return {
      taus: taus(),
      attributes: q.attributes,
      utility: uname,
      results: scores.map((s) => ({
        quantiles: Array.from(s.quantiles),
        expectation: s.expectation,
        utility: utility(s.quantiles, q.taus),
        gate: Array.from(s.gate),
      })),
    };
  }

  async function openRlhfReward(o: Json): Promise<Json> {
    const q = needQrm();
    const queries = strList(o, 'query', true)!;
    const prompts = strList(o, 'prompts', false);
    if (prompts && prompts.length !== queries.length) throw bad('prompts', `${prompts.length} prompts for ${queries.length} queries (one each)`);
    const MARK = '\n\nAssistant:';
    const items = queries.map((full, i) => {
      const p = prompts?.[i];
      if (p !== undefined) {
        if (!full.startsWith(p)) throw bad(`query[${i}]`, 'does not start with prompts[' + i + ']');
        return { prompt: p, response: full.slice(p.length) };
      }
      const at = full.lastIndexOf(MARK);
      if (at < 0) throw bad(`query[${i}]`, `has no "${MARK.trim()}" turn to split the prompt from the response at; send "prompts" too`);
      return { prompt: full.slice(0, at + MARK.length), response: full.slice(at + MARK.length) };
    });
    const scores = await q.score(items, { batchSize: cfg.rewardBatchSize });
    const rewards = scores.map((s) => fixedUtility(s.quantiles, q.taus));
    const logs: Record<string, number[]> = { expectation: scores.map((s) => s.expectation) };
    q.taus.forEach((t, j) => (logs[`q${t.toFixed(2)}`] = scores.map((s) => s.quantiles[j]!)));
    return { rewards, scores: rewards, extra_logs: logs };
  }

  const routes: Record<string, (o: Json) => Promise<unknown> | unknown> = {
    'POST /v1/completions': completions,
    'POST /v1/embeddings': embeddings,
    'POST /v1/load_lora_adapter': loadAdapter,
    'POST /v1/unload_lora_adapter': unloadAdapter,
    'POST /v1/reward': reward,
    'POST /get_reward': openRlhfReward,
    'GET /v1/models': () => ({
      object: 'list',
      data: [
        ...(model ? [{ id: name, object: 'model', created, owned_by: 'qrlhf', root: resolve(cfg.model!), parent: null }] : []),
        ...[...adapters].map(([id, a]) => ({ id, object: 'model', created, owned_by: 'qrlhf', root: a.path, parent: name })),
      ],
    }),
    'GET /health': () => ({ ok: true }),
  };

  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, { 'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  const sendError = (res: http.ServerResponse, status: number, param: string | null, message: string) =>
    send(res, status, { error: { message, type: status >= 500 ? 'InternalServerError' : status === 404 ? 'NotFoundError' : 'BadRequestError', param, code: status } });

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '') || '/';
    const handler = routes[`${req.method} ${path}`];
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > cfg.maxBodyBytes) tooBig = true;
      else chunks.push(c);
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      void (async () => {
        try {
          if (!handler) {
            const known = Object.keys(routes).some((k) => k.endsWith(` ${path}`));
            return sendError(res, known ? 405 : 404, 'url', known ? `${req.method} is not allowed on ${path}` : `no route ${path}`);
          }
          if (tooBig) return sendError(res, 413, 'body', `the body is over ${cfg.maxBodyBytes} bytes`);
          let body: unknown = {};
          if (req.method === 'POST') {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
              body = JSON.parse(text);
            } catch {
              return sendError(res, 400, 'body', 'body: not valid JSON');
            }
          }
          const out = await handler(req.method === 'POST' ? obj(body) : {});
          send(res, 200, out);
        } catch (e) {
          if (e instanceof BadRequest) sendError(res, e.status, e.param, e.message);
          else if (e instanceof QrlhfError) sendError(res, 400, null, e.message);
          else {
            const msg = e instanceof Error ? e.message : String(e);
            log(`qrlhf serve: internal error on ${req.method} ${path}: ${msg}`);
            sendError(res, 500, null, msg);
          }
        }
      })();
    });
  });
  server.keepAliveTimeout = 30000;
  await new Promise<void>((res, rej) => {
    server.once('error', (e) => rej(new QrlhfError(`serve: cannot listen on ${cfg.host}:${cfg.port}: ${(e as Error).message}`)));
    server.listen(cfg.port, cfg.host, () => res());
  });
  const port = (server.address() as { port: number }).port;
  const url = `http://${cfg.host.includes(':') ? `[${cfg.host}]` : cfg.host}:${port}`;
  return {
    url,
    port,
    close: () =>
      new Promise<void>((res) => {
        server.closeAllConnections();
        server.close(() => res());
        model?.dispose();
        for (const a of adapters.values()) a.adapter.dispose();
        qrm?.dispose();
      }),
  };
}

/**
 * Where rollouts are sampled: a RolloutEngine. Two ship:
 * - `local`: in this process, batched generate() with the KV cache (the default);
 * - `openai`: any OpenAI-compatible server (vLLM, `qrlhf serve`), one or several.
 * Either way the learner recomputes every log-prob and the KL itself: an engine only supplies
 * token ids (an engine's own log-probs come from other kernels, other precision, and a policy
 * that may lag; TRL and OpenRLHF recompute them too).
 *
 * Seeds: the learner draws one 32-bit seed per prompt from its Rng; row j of that prompt samples
 * from Rng(`${seed}:${j}`) alone. The local engine and `qrlhf serve` (which takes the seed of a
 * request) therefore draw the same tokens for the same policy; vLLM is reproducible only as far
 * as its own seeded sampling is.
 *
 * The openai engine and the policy: after every optimiser step the learner calls
 * updatePolicy(step); the engine writes the adapter (PEFT layout) to `<adapterDir>/v<step>` and
 * loads it into every server as the model `loraName` (POST /v1/load_lora_adapter, load_inplace).
 * It is called only between batches, when no request is in flight (in-place swaps are not
 * versioned per request), and a server that has not acknowledged version v gets no request of a
 * batch sampled from v: a step never mixes two adapter versions. A server that fails mid-batch has
 * its requests moved to the others (EnginePool); with the same seeds they draw the same tokens.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ENGINE_POOL_FIELDS, EnginePool, QrlhfError, Rng, defineConfig, generate, type ConfigOf, type EngineServer, type LlamaModel } from '@qrlhf/core';

export const ENGINE_SCHEMA = defineConfig({
  kind: { type: 'string', default: 'local', choices: ['local', 'openai'], doc: 'where rollouts are sampled: local (in this process) | openai (OpenAI-compatible servers: vLLM, qrlhf serve)' },
  baseUrl: { type: 'string', default: null, nullable: true, doc: 'openai: the server, e.g. http://127.0.0.1:8000/v1' },
  baseUrls: { type: 'string[]', default: [], doc: 'openai: several servers sharing each batch (comma-separated as a flag); with baseUrl, all of them' },
  loraName: { type: 'string', default: 'qrlhf-policy', doc: 'openai: the name the adapter is loaded under and requests name as their model' },
  adapterDir: { type: 'string', default: null, nullable: true, path: true, doc: "openai: folder the servers load the adapter from (null = <out>/engine-adapter); must be visible to every server's filesystem at the same path" },
  concurrency: { type: 'int', default: 8, min: 1, doc: 'openai: requests in flight per server (one request = one prompt and its k responses)' },
  ...ENGINE_POOL_FIELDS,
});

/** The engine block of a config (see ENGINE_SCHEMA). */
export type EngineConfig = ConfigOf<typeof ENGINE_SCHEMA>;

export interface SamplingSettings {
  maxNewTokens: number;
  temperature: number;
  topP: number;
  /** 0 = off. */
  topK: number;
  eosId: number;
}

export interface Rollouts {
  /** Row g*k + j: response j of prompt g, new tokens only, EOS included when drawn. */
  responses: number[][];
  eos: boolean[];
}

export interface RolloutEngine {
  readonly kind: string;
  /** k responses for each prompt (token ids); prompt g's draws are fixed by seeds[g]. */
  generate(prompts: number[][], k: number, seeds: number[], s: SamplingSettings): Promise<Rollouts>;
  /** The policy is now at `version` (optimiser steps done): later batches must sample from it. */
  updatePolicy(version: number): Promise<void>;
  close(): Promise<void>;
}

/** Row j of a prompt seeded `seed` draws from this generator (the local engine and `qrlhf serve` agree on it). */
export function rowRng(seed: number, j: number): Rng {
  return new Rng(`${seed}:${j}`);
}

/** In-process sampling: batches of `batchRows` rows through generate() on the policy (its adapter on). */
export function localEngine(model: LlamaModel, batchRows: number): RolloutEngine {
  return {
    kind: 'local',
    async generate(prompts, k, seeds, s) {
      const rows = prompts.flatMap((p) => Array.from({ length: k }, () => p));
      const rngs = prompts.flatMap((_, g) => Array.from({ length: k }, (_, j) => rowRng(seeds[g]!, j)));
      const responses: number[][] = [];
      const eos: boolean[] = [];
      for (let i = 0; i < rows.length; i += batchRows) {
        const g = await generate(model, rows.slice(i, i + batchRows), {
          maxNewTokens: s.maxNewTokens,
          temperature: s.temperature,
          ...(s.topP < 1 ? { topP: s.topP } : {}),
          ...(s.topK > 0 ? { topK: s.topK } : {}),
          eosTokenId: s.eosId,
          rng: rngs[i]!,
          rowRngs: rngs.slice(i, i + batchRows),
        });
        responses.push(...g.tokens);
        eos.push(...g.finishedWithEos);
      }
      return { responses, eos };
    },
    async updatePolicy() {},
    async close() {},
  };
}

/** The completions fields this engine reads (vLLM >= 0.10.2 `token_ids`; older: logprobs.tokens "token_id:N"). */
interface CompletionChoice {
  index?: number;
  text?: string;
  token_ids?: number[] | null;
  logprobs?: { tokens?: string[] } | null;
  finish_reason?: string | null;
}

/** Token ids of a completion choice, or a QrlhfError naming what the server sent instead. */
export function choiceTokenIds(c: CompletionChoice, where: string): number[] {
  if (Array.isArray(c.token_ids)) return c.token_ids;
  const toks = c.logprobs?.tokens;
  if (Array.isArray(toks) && toks.every((t) => typeof t === 'string' && t.startsWith('token_id:'))) return toks.map((t) => Number(t.slice(9)));
  throw new QrlhfError(
    `${where}: the completion has no token ids (expected "token_ids", vLLM >= 0.10.2 with return_token_ids, or logprobs.tokens as "token_id:N" with return_tokens_as_token_ids)`,
  );
}

export interface OpenAiEngineOptions {
  engine: EngineConfig;
  /** The run folder (adapterDir defaults to <out>/engine-adapter). */
  out: string;
  /** Writes the current adapter into a folder (PEFT layout). */
  saveAdapter: (dir: string) => Promise<void> | void;
  /** Told of every failed request that is retried (on another server, or later). */
  onRetry?: (url: string, error: string) => void;
}

export function engineBaseUrls(e: EngineConfig): string[] {
  const urls = [...(e.baseUrl ? [e.baseUrl] : []), ...e.baseUrls];
  return [...new Set(urls)];
}

/** Rollouts on OpenAI-compatible servers; see the file comment. */
export function openAiEngine(o: OpenAiEngineOptions): RolloutEngine {
  const e = o.engine;
  const pool = new EnginePool({
    baseUrls: engineBaseUrls(e),
    concurrency: e.concurrency,
    timeoutMs: e.timeoutMs,
    retries: e.retries,
    backoffMs: e.backoffMs,
    apiKey: e.apiKey ?? process.env['QRLHF_ENGINE_API_KEY'] ?? null,
    label: 'rollout request',
    ...(o.onRetry ? { onRetry: o.onRetry } : {}),
  });
  const root = resolve(e.adapterDir ?? join(o.out, 'engine-adapter'));
  let version = -1;
  let path = '';
  const load = async (s: EngineServer) => {
    if (s.state['version'] === version) return;
    try {
      await pool.request(s, '/load_lora_adapter', { lora_name: e.loraName, lora_path: path, load_inplace: true });
    } catch (err) {
      const status = (err as { status?: number }).status;
      if (status === 404 || status === 405) {
        // vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING=True has no such route
        throw Object.assign(err as Error, {
          message: `${(err as Error).message} (is the server started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?)`,
        });
      }
      throw err;
    }
    s.state['version'] = version;
  };
  return {
    kind: 'openai',
    async updatePolicy(v) {
      const dir = join(root, `v${v}`);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      await o.saveAdapter(dir);
      const old = path;
      version = v;
      path = dir;
      // every server loads it now (a server that fails here loads it before its next request)
      await Promise.allSettled(pool.servers.map((s) => load(s)));
      if (old && old !== dir) rmSync(old, { recursive: true, force: true });
    },
    async generate(prompts, k, seeds, s) {
      if (version < 0) throw new QrlhfError('engine openai: generate() before updatePolicy(): no adapter was pushed');
      const tasks = prompts.map((ids, g) => async (server: EngineServer) => {
        await load(server);
        const body = {
          model: e.loraName,
          prompt: ids,
          n: k,
          max_tokens: s.maxNewTokens,
          temperature: s.temperature,
          top_p: s.topP,
          ...(s.topK > 0 ? { top_k: s.topK } : {}),
          seed: seeds[g],
          stop_token_ids: [s.eosId],
          return_token_ids: true,
          return_tokens_as_token_ids: true,
          logprobs: 0,
          skip_special_tokens: false,
        };
        const res = (await pool.request(server, '/completions', body)) as { choices?: CompletionChoice[] } | null;
        const where = `engine ${server.url}/completions`;
        if (!res || !Array.isArray(res.choices) || res.choices.length !== k) {
          throw new QrlhfError(`${where}: expected ${k} choices, got ${JSON.stringify(res).slice(0, 200)}`);
        }
        const choices = [...res.choices].sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
        return choices.map((c) => {
          const t = choiceTokenIds(c, where);
          const stopped = c.finish_reason === 'stop';
          // vLLM may leave the stop token out of the ids; the learner scores EOS as a token
          if (stopped && t[t.length - 1] !== s.eosId) t.push(s.eosId);
          return { tokens: t, eos: stopped };
        });
      });
      const out = (await pool.run(tasks)).flat();
      return { responses: out.map((r) => r.tokens), eos: out.map((r) => r.eos) };
    },
    async close() {},
  };
}

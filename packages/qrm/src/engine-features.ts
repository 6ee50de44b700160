/**
 * Backbone features from an inference engine (vLLM, `qrlhf serve`) through POST /v1/embeddings,
 * for a model served with last-token pooling and no normalisation: the answer for a sequence is
 * then the final-norm hidden state at its last token, exactly what the in-process 'last' pooling
 * reads. Per (prompt, response) item two sequences are sent as token ids (encoded here with the
 * backbone's tokenizer, as encodeDialogue does in process, so no engine tokenises anything):
 *   - the full prompt+response ids → the response feature;
 *   - the ids up to the prompt's last token → the prompt feature (causal attention: the state at
 *     that token in the full pass sees the prompt only, so it is the prefix's own last state).
 * 'mean' and 'max' pooling have no engine counterpart and are refused.
 */
import { ENGINE_POOL_FIELDS, EnginePool, QrlhfError, defineConfig, type ConfigOf, type Tokenizer } from '@qrlhf/core';
import { encodeDialogue, type FeatureSource, type PromptResponseItem } from './features.js';

/**
 * The `engine` block of `qrm features` (flags --engine.kind, --engine.base-url, ...): the same keys
 * as RLOO's rollout engine block where they mean the same, plus the model's name on the server.
 */
export const FEATURE_ENGINE_SCHEMA = defineConfig({
  kind: { type: 'string', default: 'local', choices: ['local', 'openai'], doc: 'local: the backbone in this process | openai: POST /v1/embeddings on the server(s) (the model folder then gives only the tokenizer and config)' },
  baseUrl: { type: 'string', default: null, nullable: true, doc: 'openai: the embedding server, e.g. http://127.0.0.1:8000/v1' },
  baseUrls: { type: 'string[]', default: [], doc: 'openai: several servers sharing the requests (comma-separated as a flag); with baseUrl, all of them' },
  model: { type: 'string', default: null, nullable: true, doc: "openai: the model's name on the server (null = the model folder's name)" },
  concurrency: { type: 'int', default: 4, min: 1, doc: 'openai: requests in flight per server' },
  ...ENGINE_POOL_FIELDS,
});
export type FeatureEngineConfig = ConfigOf<typeof FEATURE_ENGINE_SCHEMA>;

export interface EngineFeatureOptions {
  baseUrls: string[];
  /** The embedding model's name on the server (its `model` field). */
  model: string;
  /** The backbone's tokenizer (the server's own, loaded here). */
  tokenizer: Tokenizer;
  /** Longest sequence (the backbone's context). */
  maxTokens: number;
  /** Sequences per request (8). */
  batchSize?: number;
  concurrency?: number;
  timeoutMs?: number;
  retries?: number;
  backoffMs?: number;
  apiKey?: string | null;
}

interface EmbeddingAnswer {
  data?: { index?: number; embedding?: unknown }[];
}

/** Embeddings of token-id sequences, in order; checks the answer's shape. */
async function embed(pool: EnginePool, model: string, url: string, inputs: number[][], server: Parameters<EnginePool['request']>[0]): Promise<Float32Array[]> {
  const res = (await pool.request(server, '/embeddings', { model, input: inputs, encoding_format: 'float' })) as EmbeddingAnswer | null;
  const data = res?.data;
  if (!Array.isArray(data) || data.length !== inputs.length) {
    throw new QrlhfError(`engine ${url}/embeddings: expected ${inputs.length} embeddings, got ${JSON.stringify(res).slice(0, 200)}`);
  }
  const out = new Array<Float32Array>(inputs.length);
  data.forEach((row, i) => {
    const e = row.embedding;
    if (!Array.isArray(e) || e.some((x) => typeof x !== 'number')) {
      throw new QrlhfError(`engine ${url}/embeddings: item ${i} is not a list of floats (is encoding_format "float" supported?)`);
    }
    out[row.index ?? i] = Float32Array.from(e as number[]);
  });
  return out;
}

/** A FeatureSource on OpenAI-compatible embedding servers; probes the feature width with one request. */
export async function openAiFeatureSource(o: EngineFeatureOptions): Promise<FeatureSource> {
  const pool = new EnginePool({
    baseUrls: o.baseUrls,
    concurrency: o.concurrency ?? 4,
    timeoutMs: o.timeoutMs ?? 120000,
    retries: o.retries ?? 4,
    backoffMs: o.backoffMs ?? 500,
    apiKey: o.apiKey ?? process.env['QRLHF_ENGINE_API_KEY'] ?? null,
    label: 'embedding request',
  });
  const tok = o.tokenizer;
  const probe = [tok.encode('a', { addBos: true })];
  const [first] = await pool.run([(s) => embed(pool, o.model, s.url, probe, s)]);
  const d = first![0]!.length;
  if (d === 0) throw new QrlhfError(`engine ${pool.servers[0]!.url}: the embedding of a probe is empty`);
  const batch = o.batchSize ?? 8;
  return {
    d,
    maxTokens: o.maxTokens,
    ref: `openai:${pool.servers.map((s) => s.url).join(',')} model=${o.model}`,
    metadata: { engine: 'openai', engine_model: o.model, engine_urls: pool.servers.map((s) => s.url).join(','), pooling: 'last' },
    async features(items: readonly PromptResponseItem[], opts) {
      if ((opts.pooling ?? 'last') !== 'last') {
        throw new QrlhfError(`engine features: pooling "${opts.pooling}" has no engine counterpart (embeddings use last-token pooling); use --pooling last or the in-process backbone`);
      }
      const maxTokens = opts.maxTokens ?? o.maxTokens;
      const enc = items.map((it, i) => encodeDialogue(tok, opts.format, it.prompt, it.response, maxTokens, opts.where?.(i) ?? `item ${i}`));
      // sequence 2i: the full item i; 2i+1: its prompt prefix
      const seqs = enc.flatMap((e) => [e.ids, e.ids.slice(0, e.promptEnd + 1)]);
      const tasks: ((s: Parameters<EnginePool['request']>[0]) => Promise<Float32Array[]>)[] = [];
      for (let at = 0; at < seqs.length; at += batch) {
        const part = seqs.slice(at, at + batch);
        tasks.push((s) => embed(pool, o.model, s.url, part, s));
      }
      let done = 0;
      const parts = await pool.run(
        tasks.map((t) => async (s) => {
          const r = await t(s);
          done += r.length;
          opts.onBatch?.(Math.floor(done / 2));
          return r;
        }),
      );
      const all = parts.flat();
      const response = new Float32Array(items.length * d);
      const prompt = new Float32Array(items.length * d);
      for (let i = 0; i < items.length; i++) {
        for (const [k, dst] of [[2 * i, response], [2 * i + 1, prompt]] as const) {
          const e = all[k]!;
          if (e.length !== d) throw new QrlhfError(`engine embeddings: item ${i} has width ${e.length}, expected ${d}`);
          dst.set(e, i * d);
        }
      }
      return { response, prompt, truncated: enc.reduce((a, e) => a + (e.truncated > 0 ? 1 : 0), 0) };
    },
  };
}

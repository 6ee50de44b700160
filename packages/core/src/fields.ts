/**
 * Settings that several stages share, declared once and spread into each stage's schema:
 *
 *   export const RLOO_SCHEMA = defineConfig({ policy: ..., ...MODEL_FIELDS, out: outField(...), ...RUN_FIELDS, ... });
 *
 * A new option common to every stage that loads a model (a chat template, say) is added to
 * MODEL_FIELDS here and nowhere else: every schema that spreads it gets the key, the flag, the
 * --help line and the check.
 */
import { BACKEND_NAMES } from './compute/backend.js';
import { defineConfig } from './config.js';
import { CHAT_TEMPLATE_FIELD } from './chat/format.js';

/** What every stage that computes with tfjs takes. */
export const RUN_FIELDS = defineConfig({
  backend: { type: 'string', default: 'auto', choices: BACKEND_NAMES, doc: 'tfjs backend: auto picks tensorflow-gpu > webgpu (hardware adapter) > tensorflow > wasm > cpu' },
});

/** What every stage that loads a language model (besides the model path itself) takes. */
export const MODEL_FIELDS = defineConfig({
  tokenizer: { type: 'string', default: null, nullable: true, path: true, doc: "tokenizer.json, a folder, or a llama2.c tokenizer .bin (null = the model's own, inside or beside it)" },
  chatTemplate: CHAT_TEMPLATE_FIELD,
});

/** What every training run takes besides its run folder and seed. */
export const TRAIN_RUN_FIELDS = defineConfig({
  resume: { type: 'boolean', default: false, doc: "continue from the run folder's last checkpoint (a fresh start when there is none)" },
  wandbProject: { type: 'string', default: null, nullable: true, doc: 'Weights & Biases project (null = off; also needs WANDB_API_KEY)' },
});

/** A seed field: an integer >= 0 (what it seeds differs by stage, so the doc is the stage's). */
export function seedField(doc: string, dflt = 0) {
  return { type: 'int', default: dflt, min: 0, max: 2 ** 32 - 1, doc } as const;
}

/** A run folder or output path with its default (null = required). */
export function outField<D extends string | null>(dflt: D, doc: string) {
  return { type: 'string', default: dflt, nullable: (dflt === null) as D extends null ? true : false, path: true, doc } as const;
}

/**
 * How a stage talks to OpenAI-compatible servers through core's EnginePool (engine/http.ts): the
 * keys of every `engine` block that mean the same there (RLOO's rollouts, `qrm features`); each
 * block adds its own kind, servers and what it asks them for.
 */
export const ENGINE_POOL_FIELDS = defineConfig({
  timeoutMs: { type: 'int', default: 120000, min: 1, doc: 'openai: a request with no answer after this is abandoned and retried elsewhere' },
  retries: { type: 'int', default: 4, min: 0, doc: 'openai: failed attempts per request (across servers) before the work fails (the RLOO step, the feature run)' },
  backoffMs: { type: 'int', default: 500, min: 0, doc: 'openai: wait after every server has failed, doubling each time' },
  apiKey: { type: 'string', default: null, nullable: true, doc: 'openai: bearer token (null = none; also from QRLHF_ENGINE_API_KEY)' },
});


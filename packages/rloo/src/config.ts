/**
 * The RLOO configuration: every setting with its type, default and a one-line doc, declared once
 * with @qrlhf/core's defineConfig (the shared fields spread in from core and qrm). A config file is
 * a JSON object with any subset of the keys (unknown or mistyped keys are refused, naming the file
 * and the key); command-line flags override it. The run folder's config.json holds the resolved values.
 *
 * Relative paths (policy, tokenizer, qrm, prompts, out, and a utility given as a module path) are
 * resolved where the config is read: against the config file's folder for the file's, against the
 * working directory for flags (core's loadConfig).
 */
import {
  LORA_MODULES,
  MODEL_FIELDS,
  RUN_FIELDS,
  TRAIN_RUN_FIELDS,
  defaultConfig,
  defineConfig,
  loadConfig,
  outField,
  seedField,
  type ConfigOf,
} from '@qrlhf/core';
import { UTILITY_FIELDS } from '@qrlhf/qrm';
import { ENGINE_SCHEMA } from './engine.js';

export const RLOO_SCHEMA = defineConfig({
  policy: { type: 'string', default: null, nullable: true, path: true, doc: 'policy to train: a Hugging Face folder (e.g. the merged SFT model) or a llama2.c .bin; with its adapter off it is also the KL reference' },
  ...MODEL_FIELDS,
  qrm: { type: 'string', default: null, nullable: true, path: true, doc: 'quantile reward model folder (qrm.json, heads, gate) giving each response K reward quantiles' },
  qrmNormalise: { type: 'string', default: null, nullable: true, choices: ['none', 'kept-weight'], doc: "scaling of the QRM's quantiles; unset (default): the QRM's own setting in qrm.json; 'none': eq. 3 as is; 'kept-weight': divided by the gate weight on the attributes not zeroed by debiasing (see @qrlhf/qrm)" },
  prompts: { type: 'string', default: null, nullable: true, path: true, doc: 'prompts: .jsonl(.gz) of {prompt} rows, or HH-RLHF {chosen, ...} rows whose prompt part is used' },
  maxPrompts: { type: 'int', default: 0, min: 0, doc: 'read at most this many rows of the prompts file, in file order (0 = all)' },
  out: outField('runs/rloo', 'run folder: config.json, metrics.jsonl, samples.jsonl, checkpoints/, adapter/'),
  seed: seedField('seed of every random draw: LoRA init, prompt order, sampling, dropout'),
  ...RUN_FIELDS,
  ...TRAIN_RUN_FIELDS,

  ...UTILITY_FIELDS,

  k: { type: 'int', default: 2, min: 2, doc: 'responses sampled per prompt (the leave-one-out group)' },
  batchSize: { type: 'int', default: 64, min: 1, doc: 'prompts per RL step (each gets k responses)' },
  steps: { type: 'int', default: 100, min: 1, doc: 'RL steps to run' },
  lr: { type: 'number', default: 1e-4, min: 0, minExclusive: true, doc: 'AdamW learning rate (constant)' },
  weightDecay: { type: 'number', default: 0, min: 0, doc: "AdamW's decoupled weight decay" },
  gradClip: { type: 'number', default: 1, min: 0, doc: 'clip the global gradient norm to this (0 = no clipping)' },

  loraR: { type: 'int', default: 32, min: 1, doc: 'LoRA rank r of the RL adapter' },
  loraAlpha: { type: 'number', default: 64, min: 0, minExclusive: true, doc: 'LoRA alpha: the update is scaled by alpha / r' },
  loraDropout: { type: 'number', default: 0, min: 0, max: 0.99, doc: "dropout on the LoRA branch's input, in the gradient pass only" },
  loraTargets: { type: 'string[]', default: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], choices: [...LORA_MODULES, 'all-linear'], doc: 'adapted layers: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear (comma-separated as a flag)' },

  betaKl: { type: 'number', default: 0.05, min: 0, doc: 'KL coefficient beta: R = U - beta * sum_t kl_t' },
  klEstimator: { type: 'string', default: 'k1', choices: ['k1', 'k3'], doc: 'per-token KL estimate, d = log pi - log pi_ref: k1 = d; k3 = exp(-d) - 1 + d' },
  missingEosPenalty: { type: 'number', default: 0, min: 0, doc: 'subtracted from the reward of a response that hit maxNewTokens without EOS (0 = off)' },

  maxPromptLength: { type: 'int', default: 347, min: 1, doc: 'prompts of more tokens than this (BOS included) are filtered out and counted (the paper: under 348)' },
  maxNewTokens: { type: 'int', default: 64, min: 1, doc: 'longest response in tokens (EOS included)' },
  temperature: { type: 'number', default: 1, min: 0, minExclusive: true, doc: 'sampling temperature (the log-probs of the loss and the KL are taken at the same temperature)' },
  topP: { type: 'number', default: 1, min: 0, minExclusive: true, max: 1, doc: 'nucleus sampling mass; must stay 1: the loss and the KL are of the full distribution, so truncated sampling is refused (a biased gradient)' },
  topK: { type: 'int', default: 0, min: 0, doc: 'top-k sampling; must stay 0 for the same reason as topP (refused otherwise)' },

  ppoEpochs: { type: 'int', default: 0, min: 0, doc: 'optimiser updates per batch with the PPO-clipped ratio (0 = one plain REINFORCE update)' },
  clipRange: { type: 'number', default: 0.2, min: 0, doc: 'PPO clip range epsilon: the ratio is clipped to [1 - eps, 1 + eps]' },

  microBatchSize: { type: 'int', default: 8, min: 1, doc: 'sequences per forward/backward pass (gradients are summed over the whole batch)' },
  generationBatchSize: { type: 'int', default: 32, min: 1, doc: 'sequences decoded together by one generate call' },
  engine: { type: 'group', schema: ENGINE_SCHEMA, doc: 'where rollouts are sampled (flags --engine.kind, --engine.base-url, ...)' },
  rewardBatchSize: { type: 'int', default: 8, min: 1, doc: "sequences per forward pass of the QRM's backbone" },

  logEvery: { type: 'int', default: 1, min: 1, doc: 'write a metrics line every N steps (and at the last)' },
  sampleEvery: { type: 'int', default: 10, min: 0, doc: 'write a few responses with their quantiles to samples.jsonl every N steps (0 = never)' },
  samplesPerLog: { type: 'int', default: 4, min: 1, doc: 'responses written each time' },
  checkpointEvery: { type: 'int', default: 10, min: 0, doc: 'checkpoint every N steps, besides the last (0 = only the last)' },
});

/** The RLOO configuration (see RLOO_SCHEMA for every key's default and doc). */
export type RlooConfig = ConfigOf<typeof RLOO_SCHEMA>;

/** A fresh copy of the defaults. A library user may write `{ ...rlooDefaults(), policy, qrm, prompts, out }`. */
export function rlooDefaults(): RlooConfig {
  return defaultConfig(RLOO_SCHEMA);
}

/** The config a run uses: defaults < config file (if any) < flags (core's loadConfig). */
export function loadRlooConfig(file: string | null, flags: Record<string, unknown> = {}): RlooConfig {
  return loadConfig(RLOO_SCHEMA, file, flags);
}

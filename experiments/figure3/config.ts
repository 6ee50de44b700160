import { BACKEND_NAMES, defineConfig, type ConfigOf } from '@qrlhf/core';

/**
 * Every setting of the Figure 3 experiment, with its default (sized to finish in about 15 minutes
 * on 2 CPU cores) and a one-line doc. `configs/figure3.json` holds the same defaults; a smaller
 * `configs/figure3-smoke.json` runs the whole pipeline in about a minute.
 */
export const FIGURE3_SCHEMA = defineConfig({
  out: { type: 'string', default: 'runs/figure3', doc: 'run folder (every stage keeps its outputs here; a rerun skips finished stages)' },
  backend: { type: 'string', default: 'auto', choices: BACKEND_NAMES, doc: 'tfjs backend: auto picks tensorflow-gpu > webgpu (hardware adapter) > tensorflow > wasm > cpu' },
  worldSeed: { type: 'int', default: 1, min: 0, doc: 'seed of the synthetic world and its datasets' },
  seeds: { type: 'number[]', default: [1, 2], doc: 'RLOO seeds: each utility is trained once per seed' },

  pretrainDialogues: { type: 'int', default: 12000, min: 1, doc: 'dialogues in the pretraining corpus' },
  sftDialogues: { type: 'int', default: 3000, min: 10, doc: 'SFT dialogues (HH-RLHF chosen/rejected)' },
  ratedResponses: { type: 'int', default: 3000, min: 10, doc: 'rated (prompt, response) items for the quantile heads' },
  ratersPerResponse: { type: 'int', default: 3, min: 1, doc: 'raters per rated item (conflicting labels)' },
  preferencePairs: { type: 'int', default: 3000, min: 10, doc: 'preference pairs for the gate' },
  rlPrompts: { type: 'int', default: 2000, min: 10, doc: 'RL training prompts' },
  evalPrompts: { type: 'int', default: 200, min: 10, doc: 'held-out prompts of the final evaluation' },

  hiddenSize: { type: 'int', default: 96, min: 8, doc: 'base model width' },
  layers: { type: 'int', default: 3, min: 1, doc: 'base model layers' },
  heads: { type: 'int', default: 4, min: 1, doc: 'attention heads' },
  kvHeads: { type: 'int', default: 2, min: 1, doc: 'key/value heads (grouped-query attention)' },
  ffnSize: { type: 'int', default: 256, min: 8, doc: 'SwiGLU hidden size' },
  pretrainSteps: { type: 'int', default: 300, min: 1, doc: 'pretraining steps (every parameter)' },
  pretrainBatch: { type: 'int', default: 32, min: 1, doc: 'pretraining dialogues per step' },
  pretrainLr: { type: 'number', default: 3e-3, min: 0, doc: 'pretraining peak learning rate (cosine to a tenth)' },

  sftSteps: { type: 'int', default: 60, min: 1, doc: 'SFT optimiser steps' },
  sftBatch: { type: 'int', default: 32, min: 1, doc: 'SFT sequences per step' },
  sftLr: { type: 'number', default: 2e-3, min: 0, doc: 'SFT peak learning rate' },
  loraR: { type: 'int', default: 8, min: 1, doc: 'LoRA rank of SFT and RLOO' },
  loraAlpha: { type: 'number', default: 16, min: 0, doc: 'LoRA alpha of SFT and RLOO' },

  pooling: { type: 'string', default: 'mean', choices: ['last', 'mean'], doc: "QRM response feature: SPEC's last token, or the mean over the response's tokens (better for a tiny backbone)" },
  quantiles: { type: 'int', default: 19, min: 1, doc: 'quantile levels K (tau_k = k/(K+1))' },
  l1: { type: 'number', default: 0.003, min: 0, doc: "quantile heads' L1 penalty alpha" },
  gateHidden: { type: 'int', default: 128, min: 1, doc: "gate MLP width (ArmoRM: 1024; the world's features are 96-dim)" },
  gateEpochs: { type: 'int', default: 20, min: 1, doc: 'gate training epochs' },
  gateBatch: { type: 'int', default: 256, min: 1, doc: 'gate batch size' },

  rlSteps: { type: 'int', default: 150, min: 1, doc: 'RLOO steps per run' },
  rlPromptsPerStep: { type: 'int', default: 16, min: 1, doc: 'prompts per RLOO step (k responses each)' },
  k: { type: 'int', default: 2, min: 2, doc: 'RLOO samples per prompt' },
  rlLr: { type: 'number', default: 2e-3, min: 0, doc: 'RLOO learning rate (constant)' },
  betaKl: { type: 'number', default: 0.02, min: 0, doc: 'KL coefficient to the SFT policy' },
  lambda: { type: 'number', default: 5, min: 0, doc: 'risk aversion of the exponential utility (rewards on [0, 1])' },
  maxNewTokens: { type: 'int', default: 48, min: 1, doc: 'longest response (tokens)' },
  temperature: { type: 'number', default: 1, min: 0, doc: 'sampling temperature of rollouts and of the final evaluation' },
});

export type Figure3Config = ConfigOf<typeof FIGURE3_SCHEMA>;

/**
 * The Figure 3 experiment's settings: one block per stage, each a partial of that stage's own
 * schema (checked by it, its defaults filling what a config file leaves out), plus what the
 * experiment itself decides (the run folder, the backend, the RLOO seeds). The keys a stage gets
 * from the pipeline (its input and output paths, the RLOO seed and utility of each run) are not in
 * its block. `configs/figure3.json` holds the paper-like settings (about 8 minutes on 2 CPU
 * cores); `configs/figure3-smoke.json` runs the whole pipeline in about a minute. Any key can be
 * set from the command line: --rloo.lambda 3, --sft.max-steps 20, --world.pairs 500.
 */
import { RUN_FIELDS, defineConfig, omitFields, outField, type ConfigOf } from '@qrlhf/core';
import { QRM_FEATURES_SCHEMA, QRM_FIT_SCHEMA, QRM_GATE_SCHEMA } from '@qrlhf/qrm';
import { RLOO_SCHEMA } from '@qrlhf/rloo';
import { SFT_SCHEMA } from '@qrlhf/sft';
import { WORLD_DATA_SCHEMA } from '@qrlhf/world';
import { PRETRAIN_SCHEMA } from './pretrain.js';
import { LAMBDA_RULES } from './lambda.js';
import { POLICY_RATINGS_SCHEMA } from './policy-ratings.js';
import { REWARD_BACKBONE_SCHEMA } from './reward-backbone.js';

/** Keys every stage gets from the pipeline: one process, one backend. */
const PIPELINE = ['backend'] as const;

export const FIGURE3_SCHEMA = defineConfig({
  out: outField('runs/figure3', 'run folder (every stage keeps its outputs here; a rerun skips finished stages)'),
  ...RUN_FIELDS,
  seeds: { type: 'number[]', default: [1, 2, 3, 4, 5], min: 0, doc: 'RLOO seeds: each utility is trained once per seed (and the SFT policy evaluated once per seed)' },
  parallel: {
    type: 'int', default: 2, min: 1, max: 64,
    doc: 'RL jobs (each utility × seed with its evaluation, and the SFT evaluations) run this many at a time in worker processes with one wasm thread each; 1 runs them in this process. Results do not depend on it',
  },
  lambdaRule: {
    type: 'string', default: 'mean-budget', choices: LAMBDA_RULES,
    doc: "how the risk-aware run's lambda is chosen, never from the truth (lambda.ts): 'mean-budget' = the largest lambda (grid 1 … 128) whose best-of-lambdaSamples choice among the SFT policy's samples on RL prompts, by the QRM's estimates, gives up at most lambdaBudget of the estimated mean of the choice by the mean; 'fixed' = rloo.lambda; 'ce-q25' = the lambda whose certainty equivalent of the QRM's estimated rewards of SFT responses equals their mean estimated q0.25",
  },
  lambdaPrompts: { type: 'int', default: 200, min: 1, doc: "RL prompts (the first ones of prompts.jsonl) the SFT policy answers for the rules 'mean-budget' and 'ce-q25'" },
  lambdaSamples: { type: 'int', default: 4, min: 2, max: 64, doc: "samples per prompt the rule 'mean-budget' chooses between" },
  lambdaBudget: { type: 'number', default: 0.03, min: 0.001, max: 0.5, doc: "the share of the estimated mean the rule 'mean-budget' lets the utility's choice give up (3 %: the paper's 'similar expected reward' as claim (c) reads it)" },
  bootstrapResamples: { type: 'int', default: 10000, min: 100, doc: 'resamples of the two-level bootstrap (seeds, then evaluation prompts; stats.ts) behind every 95 % interval of the summary' },
  rewardSource: {
    type: 'string', default: 'qrm', choices: ['qrm', 'truth'],
    doc: "RLOO's reward: 'qrm' (the experiment) or 'truth', a diagnostic that trains on the world's exact quantiles (what RL reaches with this policy and budget, apart from the QRM's error)",
  },
  world: { type: 'group', schema: WORLD_DATA_SCHEMA, doc: "the synthetic world's seed and datasets (@qrlhf/world)" },
  pretrain: { type: 'group', schema: PRETRAIN_SCHEMA, doc: 'the tiny base model, trained from random weights (pretrain.ts)' },
  sft: {
    type: 'group', schema: omitFields(SFT_SCHEMA, [...PIPELINE, 'model', 'tokenizer', 'data', 'out', 'resume']),
    doc: 'SFT with LoRA on the world\'s chosen dialogues (@qrlhf/sft); the adapter is merged into the base',
  },
  policyRatings: {
    type: 'group', schema: POLICY_RATINGS_SCHEMA,
    doc: "on-policy ratings (policy-ratings.ts): the SFT policy's own samples rated by the world and added to the QRM's stage-1 ratings; sampled with the rloo block's maxNewTokens, temperature and generationBatchSize",
  },
  rewardBackbone: {
    type: 'group', schema: REWARD_BACKBONE_SCHEMA,
    doc: "the QRM's backbone (reward-backbone.ts): with steps > 0 a copy of the base model fine-tuned on the ratings (on-policy ones included), whose features the QRM reads; 0 = the frozen base model",
  },
  qrm: {
    type: 'group',
    doc: 'the quantile reward model on the frozen base model (@qrlhf/qrm stages)',
    schema: defineConfig({
      features: { type: 'group', schema: omitFields(QRM_FEATURES_SCHEMA, [...PIPELINE, 'model', 'tokenizer', 'ratings', 'pairs', 'out', 'engine']), doc: 'stage-1 and stage-2 features' },
      fit: { type: 'group', schema: omitFields(QRM_FIT_SCHEMA, ['features', 'out']), doc: 'the quantile heads (stage 1)' },
      gate: { type: 'group', schema: omitFields(QRM_GATE_SCHEMA, [...PIPELINE, 'heads', 'pairs', 'reference', 'out', 'backbone', 'tokenizer', 'pooling', 'metrics']), doc: 'the gate (stage 2)' },
    }),
  },
  rloo: {
    type: 'group', schema: omitFields(RLOO_SCHEMA, [...PIPELINE, 'policy', 'tokenizer', 'qrm', 'prompts', 'out', 'seed', 'utility', 'resume']),
    doc: 'RLOO (@qrlhf/rloo): every run of every seed; its sampling settings also draw the final evaluation\'s responses',
  },
});

export type Figure3Config = ConfigOf<typeof FIGURE3_SCHEMA>;

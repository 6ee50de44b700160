/**
 * `qrlhf qrm features|fit|gate|score|eval`: the quantile reward model's stages (@qrlhf/qrm
 * stages.ts), each generated from its schema: every setting a flag, --config FILE for a JSON file.
 */
import type { Argv, CommandModule } from 'yargs';
import {
  QRM_EVAL_SCHEMA, QRM_EXPORT_SCHEMA, QRM_FEATURES_SCHEMA, QRM_FIT_SCHEMA, QRM_GATE_SCHEMA, QRM_IMPORT_SCHEMA, QRM_SCORE_SCHEMA,
  runQrmEval, runQrmExport, runQrmFeatures, runQrmFit, runQrmGate, runQrmImport, runQrmScore,
} from '@qrlhf/qrm';
import { stageCommand } from '../options.js';

const subcommands = [
  stageCommand({
    command: 'features', schema: QRM_FEATURES_SCHEMA, run: runQrmFeatures, quiet: true,
    describe: 'Run a frozen backbone over ratings (stage 1) or preference pairs (stage 2) and cache the features (ArmoRM layout)',
  }),
  stageCommand({
    command: 'fit', schema: QRM_FIT_SCHEMA, run: runQrmFit, quiet: true,
    describe:
      'Stage 1: fit the linear quantile heads (pinball loss + alpha·L1) on stage-1 features; writes OUT/heads.safetensors and ' +
      'OUT/fit-report.json (per attribute and level: objective, certified lower bound of the optimum, relative gap, iterations, ' +
      'finish = lp | gap | stall | limit; on the [0, 1] label scale) and prints that table',
  }),
  stageCommand({
    command: 'gate', schema: QRM_GATE_SCHEMA, run: runQrmGate, quiet: true,
    describe: 'Stage 2: verbosity penalties, then train the gating network (Bradley-Terry on the mixture expectation); writes the QRM folder',
  }),
  stageCommand({
    command: 'score', schema: QRM_SCORE_SCHEMA, run: runQrmScore, quiet: true,
    describe: 'Score {prompt, response} rows: K reward quantiles, expectation, utility, gate weights (jsonl out)',
  }),
  stageCommand({
    command: 'eval', schema: QRM_EVAL_SCHEMA, run: runQrmEval, quiet: true,
    describe: "Evaluate on preference rows with RewardBench's rule (a tie is wrong; per subset, section and overall)",
  }),
  stageCommand({
    command: 'import', schema: QRM_IMPORT_SCHEMA, run: runQrmImport,
    describe: 'Read a released-layout QRM folder (nicolinho/QRM-*: regression_layer, BatchNorm gate, reward_transform_matrix) as a qrlhf QRM folder',
  }),
  stageCommand({
    command: 'export', schema: QRM_EXPORT_SCHEMA, run: runQrmExport,
    describe: "Write a QRM in the released layout (--format hf): backbone + regression_layer + gating.*, loadable by the authors' modeling code",
  }),
];

export const qrmCommand: CommandModule = {
  command: 'qrm <command>',
  describe: 'Quantile reward model: features, fit (stage 1), gate (stage 2), score, eval, import / export (the released layout)',
  builder: (y: Argv) => subcommands.reduce((a, c) => a.command(c), y).demandCommand(1, 'name a qrm command: features, fit, gate, score, eval, import or export'),
  handler: () => {},
};

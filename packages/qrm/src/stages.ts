/**
 * The quantile reward model's runnable stages, each a schema and a run function that takes the
 * resolved config (the `qrlhf qrm …` commands are generated from these; an experiment composes them):
 *
 *   features  a frozen backbone over ratings (stage 1) or preference pairs (stage 2) → cached features
 *   fit       stage 1: linear quantile heads (pinball loss + alpha·L1) → heads.safetensors, fit-report.json
 *   gate      stage 2: verbosity penalties, the gating network (Bradley-Terry) → the QRM folder
 *   score     {prompt, response} rows → K quantiles, expectation, utility, gate weights (JSONL)
 *   eval      preference rows → RewardBench accuracy (a tie is wrong), per subset, section and overall
 *
 * Every default and bound is in the schema; paths arrive resolved (see @qrlhf/core's config layer).
 * Progress and the closing summary go to stderr (`quiet` silences them); results to files or stdout.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import {
  MODEL_FIELDS,
  CHAT_TEMPLATE_FIELD,
  dialogueFormatFor,
  isChatTemplatePath,
  type DialogueFormat,
  Progress,
  QrlhfError,
  RUN_FIELDS,
  Rng,
  Tokenizer,
  checkWritable,
  configFromHf,
  defineConfig,
  initBackend,
  loadModel,
  readJsonl,
  requireKeys,
  seedField,
  sharedDataDir,
  writeFileAtomic,
  checkRunFolderKind,
  claimRunFolder,
  type ConfigOf,
  type Metrics,
} from '@qrlhf/core';
import { rewardBenchScore, loadLlmbar, toPreferenceRow, type PreferenceRow } from './eval.js';
import { FEATURE_POOLINGS, extractPairFeatures, extractRatingFeatures, readPairFeatures, readRatingFeatures, type FeaturePooling, type FeatureSource, type PairFeatures } from './features.js';
import { FEATURE_ENGINE_SCHEMA, openAiFeatureSource } from './engine-features.js';
import { makeProvenance, requireSameProvenance, warnUnrecorded, type FeatureProvenance } from './provenance.js';
import { MIXTURE_MODES, type GateProgress } from './gate.js';
import { QuantileRewardModel, loadHeads, saveHeads, type QrmScore } from './model.js';
import { fitQuantileHeads, formatFitReport } from './quantile/index.js';
import { trainQrm } from './stage2.js';
import { UTILITY_FIELDS, makeUtility, type Utility } from './utilities.js';

/** A file or folder setting without a default (the run function says which ones it requires). */
const pathField = (doc: string) => ({ type: 'string', default: null, nullable: true, path: true, doc }) as const;

export interface StageOptions {
  /** No progress or summary on stderr. */
  quiet?: boolean;
}

function say(o: StageOptions, text: string): void {
  if (!o.quiet) process.stderr.write(`${text}\n`);
}

function bar(o: StageOptions, total: number, label: string): { update: (done: number, info?: string) => void; done: () => void } {
  if (o.quiet) return { update: () => undefined, done: () => undefined };
  const p = new Progress(total, label);
  return { update: (done, info) => p.update(done, info), done: () => p.done() };
}

function existingFile(key: string, p: string): string {
  if (!existsSync(p)) throw new QrlhfError(`--${key} ${p}: no such file`);
  return p;
}

// ---- features -------------------------------------------------------------------------------

export const QRM_FEATURES_SCHEMA = defineConfig({
  model: pathField('frozen backbone: a Hugging Face folder or a llama2.c .bin (required)'),
  ...MODEL_FIELDS,
  ratings: pathField('stage-1 input: jsonl {prompt, response, <attribute>: number|null, ...} (give this or pairs)'),
  pairs: pathField('stage-2 input: jsonl {prompt, chosen, rejected} (give this or ratings)'),
  out: pathField('output .safetensors (required); an interrupted run resumes from OUT.parts/'),
  attributes: { type: 'string[]', default: null, nullable: true, doc: 'stage 1: the attribute columns (null = every numeric field)' },
  batchSize: { type: 'int', default: 8, min: 1, doc: 'sequences per forward pass' },
  shardSize: { type: 'int', default: 512, min: 1, doc: 'rows per resumable shard' },
  maxTokens: { type: 'int', default: null, nullable: true, min: 2, doc: "longest sequence; longer ones lose their first tokens (null = the model's context)" },
  maxRows: { type: 'int', default: null, nullable: true, min: 1, doc: 'use only the first N rows (null = all)' },
  pooling: { type: 'string', default: 'last', choices: FEATURE_POOLINGS, doc: "response feature: the 'last' token (SPEC §4), the 'mean' over the response's tokens, or their per-dimension 'max'" },
  engine: { type: 'group', schema: FEATURE_ENGINE_SCHEMA, doc: 'what computes the features (flags --engine.kind, --engine.base-url, --engine.model, ...)' },
  ...RUN_FIELDS,
});
export type QrmFeaturesConfig = ConfigOf<typeof QRM_FEATURES_SCHEMA>;

export async function runQrmFeatures(config: QrmFeaturesConfig, o: StageOptions = {}) {
  const cfg = requireKeys(config, ['model', 'out'], 'qrm features');
  if ((cfg.ratings === null) === (cfg.pairs === null)) throw new QrlhfError('qrm features: give exactly one of --ratings (stage 1) or --pairs (stage 2)');
  const stage1 = cfg.ratings !== null;
  const input = existingFile(stage1 ? 'ratings' : 'pairs', (cfg.ratings ?? cfg.pairs)!);
  checkWritable(cfg.out, 'file');
  let source: FeatureSource | null = null;
  let loaded: Awaited<ReturnType<typeof loadModel>> | null = null;
  let format: DialogueFormat | undefined;
  let provenance: FeatureProvenance;
  const e = cfg.engine;
  if (e.kind === 'openai') {
    const baseUrls = [...(e.baseUrl !== null ? [e.baseUrl] : []), ...e.baseUrls];
    if (baseUrls.length === 0) throw new QrlhfError('qrm features: --engine.base-url (or --engine.base-urls) is required with --engine.kind openai (the embedding server)');
    const cfgPath = join(cfg.model, 'config.json');
    if (!existsSync(cfgPath)) throw new QrlhfError(`${cfg.model}: --engine.kind openai needs the backbone's Hugging Face folder for its config.json and tokenizer (no ${cfgPath})`);
    const config = configFromHf(JSON.parse(readFileSync(cfgPath, 'utf8')), cfgPath);
    const tokenizer = await Tokenizer.fromFile(cfg.tokenizer ?? cfg.model, config);
    format = dialogueFormatFor(cfg.chatTemplate, tokenizer);
    const engineModel = e.model ?? basename(cfg.model);
    const maxTokens = cfg.maxTokens ?? config.maxPositionEmbeddings;
    source = await openAiFeatureSource({
      baseUrls, model: engineModel, tokenizer, maxTokens, batchSize: cfg.batchSize,
      concurrency: e.concurrency, timeoutMs: e.timeoutMs, retries: e.retries, backoffMs: e.backoffMs, apiKey: e.apiKey,
    });
    provenance = makeProvenance({
      pooling: cfg.pooling, maxTokens, backbonePath: resolve(cfg.model), tokenizerPath: cfg.tokenizer, tokenizer, chatTemplate: cfg.chatTemplate, format,
      engine: { kind: 'openai', model: engineModel },
    });
  } else {
    await initBackend(cfg.backend, { quiet: o.quiet ?? false });
    loaded = await loadModel(cfg.model, cfg.tokenizer === null ? {} : { tokenizer: cfg.tokenizer });
    format = dialogueFormatFor(cfg.chatTemplate, loaded.tokenizer);
    provenance = makeProvenance({
      pooling: cfg.pooling, maxTokens: cfg.maxTokens ?? loaded.model.config.maxPositionEmbeddings, backbonePath: resolve(cfg.model),
      tokenizerPath: cfg.tokenizer, tokenizer: loaded.tokenizer, chatTemplate: cfg.chatTemplate, format, engine: { kind: 'local' },
    });
  }
  let b = null as ReturnType<typeof bar> | null;
  try {
    const opts = {
      input,
      output: cfg.out,
      ...(source ? { source } : { backbone: { model: loaded!.model, tokenizer: loaded!.tokenizer } }),
      backboneRef: cfg.model,
      batchSize: cfg.batchSize,
      shardSize: cfg.shardSize,
      maxTokens: cfg.maxTokens ?? undefined,
      maxRows: cfg.maxRows ?? undefined,
      attributes: cfg.attributes ?? undefined,
      pooling: cfg.pooling,
      format,
      provenance,
      onProgress: (done: number, total: number) => (b ??= bar(o, total, stage1 ? 'features (stage 1)' : 'features (stage 2)')).update(done),
    };
    const r = stage1 ? await extractRatingFeatures(opts) : await extractPairFeatures(opts);
    b?.done();
    say(o,
      `qrlhf: wrote ${cfg.out}: ${r.n} rows, d = ${r.d}${r.attributes ? `, attributes ${r.attributes.join(', ')}` : ''}` +
        `${r.resumedShards ? ` (resumed after ${r.resumedShards} shards)` : ''}${r.truncated ? `; ${r.truncated} sequences cut to --max-tokens` : ''}`,
    );
    return r;
  } finally {
    loaded?.model.dispose();
  }
}

// ---- fit ------------------------------------------------------------------------------------

export const QRM_FIT_SCHEMA = defineConfig({
  features: pathField('stage-1 features: {embeddings [N, d], labels [N, M]} (required)'),
  out: pathField('output folder: heads.safetensors and fit-report.json are written into it (required)'),
  alpha: { type: 'number', default: 0.003, min: 0, doc: 'L1 penalty of the pinball loss' },
  quantiles: { type: 'int', default: 19, min: 1, max: 999, doc: 'number of levels K, tau_k = k/(K+1)' },
  maxRows: { type: 'int', default: 60000, min: 1, doc: 'labelled rows per attribute at most, a seeded random subset' },
  seed: seedField('seed of the row subsampling'),
  labelScale: { type: 'string', default: 'minmax', choices: ['minmax', 'none'], doc: "'minmax' scales each attribute's labels to [0, 1]; 'none' takes them as they are (they must lie in [0, 1])" },
  timeLimit: { type: 'number', default: null, nullable: true, min: 0, doc: 'seconds per attribute for the first-order phase (null = none: the heads are then a function of the features and this config alone; a limit makes them depend on the machine)' },
  tolerance: { type: 'number', default: 1e-4, min: 0, max: 1, doc: 'a level stops once its certified relative gap is below this' },
  lpMaxCells: { type: 'int', default: 2e6, min: 0, doc: 'finish with the exact LP when rows x (d+1) is at most this (0 = never)' },
});
export type QrmFitConfig = ConfigOf<typeof QRM_FIT_SCHEMA>;

export async function runQrmFit(config: QrmFitConfig, o: StageOptions = {}) {
  const cfg = requireKeys(config, ['features', 'out'], 'qrm fit');
  const featuresPath = existingFile('features', cfg.features);
  checkWritable(cfg.out, 'folder');
  const f = readRatingFeatures(featuresPath);
  const t0 = Date.now();
  const b = bar(o, f.attributes.length, 'fit');
  if (!f.provenance) warnUnrecorded('qrm fit', [featuresPath]);
  const fitted = await fitQuantileHeads(f.embeddings, f.n, f.d, f.labels, {
    attributes: f.attributes,
    K: cfg.quantiles,
    alpha: cfg.alpha,
    maxRows: cfg.maxRows,
    rng: new Rng(cfg.seed),
    labelScale: cfg.labelScale,
    tolerance: cfg.tolerance,
    lpMaxCells: cfg.lpMaxCells,
    ...(cfg.timeLimit !== null ? { timeLimit: cfg.timeLimit } : {}),
    onProgress: (p) => b.update(p.index, `${p.attribute}: iteration ${p.iteration}, worst gap ${p.worstGap.toExponential(2)}`),
  });
  // the heads carry how their features were made, for qrm gate to compare with the pairs'
  const heads = { ...fitted, provenance: f.provenance ?? null, featuresFile: resolve(featuresPath) };
  b.done();
  mkdirSync(cfg.out, { recursive: true });
  const path = join(cfg.out, 'heads.safetensors');
  saveHeads(path, heads);
  const reportPath = join(cfg.out, 'fit-report.json');
  writeFileAtomic(reportPath, JSON.stringify(heads.report, null, 2) + '\n');
  if (!o.quiet) process.stdout.write(formatFitReport(heads.report) + '\n');
  say(o, `qrlhf: wrote ${path}: ${f.attributes.length} attributes x ${cfg.quantiles} levels on d = ${f.d} (${f.n} rows, ${((Date.now() - t0) / 1000).toFixed(1)} s) and ${reportPath}`);
  return heads;
}

// ---- gate -----------------------------------------------------------------------------------

export const QRM_GATE_SCHEMA = defineConfig({
  heads: pathField('heads.safetensors or the folder holding it (required)'),
  pairs: pathField('stage-2 features of preference pairs (required)'),
  reference: pathField('stage-2 features that set the verbosity penalties (null = the pairs)'),
  out: pathField('QRM folder to write: heads.safetensors, gate.safetensors, qrm.json (required)'),
  verbosity: { type: 'string', default: null, nullable: true, doc: 'verbosity attribute, or "none" for no debiasing (null = the attribute named verbosity, if any)' },
  backbone: pathField("backbone recorded in qrm.json for scoring text (null = the features file's)"),
  tokenizer: pathField("tokenizer recorded in qrm.json (null = the backbone's own)"),
  epochs: { type: 'int', default: 3, min: 1, doc: 'epochs' },
  batchSize: { type: 'int', default: 1024, min: 1, doc: 'pairs per step' },
  lr: { type: 'number', default: 3e-4, min: 0, minExclusive: true, doc: 'peak learning rate of the cosine schedule' },
  weightDecay: { type: 'number', default: 1e-3, min: 0, doc: "AdamW's decoupled weight decay" },
  warmupSteps: { type: 'int', default: 0, min: 0, doc: 'linear warm-up steps' },
  hidden: { type: 'int', default: 1024, min: 1, doc: 'width of the hidden layers' },
  layers: { type: 'int', default: 3, min: 0, max: 16, doc: 'number of hidden layers' },
  valFraction: { type: 'number', default: 0.1, min: 0, max: 0.9, doc: 'share of pairs held out for accuracy' },
  mixture: { type: 'string', default: 'eq3', choices: MIXTURE_MODES, doc: 'eq3 (the paper: weighted sum of quantile functions) | mixture (quantiles of the mixture distribution)' },
  pooling: { type: 'string', default: null, nullable: true, choices: FEATURE_POOLINGS, doc: "the response-feature pooling, recorded for scoring (null = the features' record; 'last' for files without one); must agree with the features" },
  chatTemplate: { ...CHAT_TEMPLATE_FIELD, default: null, nullable: true, doc: `the dialogue format, recorded for scoring (null = the features' record; 'auto' for files without one); must agree with the features: ${CHAT_TEMPLATE_FIELD.doc}` },
  metrics: pathField('append per-step metrics as JSON lines to this file (null = none)'),
  seed: seedField('seed of the split, the init and the shuffling'),
  ...RUN_FIELDS,
});
export type QrmGateConfig = ConfigOf<typeof QRM_GATE_SCHEMA>;

function headsFile(p: string): string {
  const file = existsSync(p) && statSync(p).isDirectory() ? join(p, 'heads.safetensors') : p;
  if (!existsSync(file)) throw new QrlhfError(`--heads ${p}: no heads.safetensors there (run qrlhf qrm fit first)`);
  return file;
}

/**
 * The features' record shared by the heads, the pairs and the reference (provenance.ts): one
 * QrlhfError naming both files when two disagree, or when --pooling / --chat-template disagree
 * with it; one warning line for files that record none; null when none does.
 */
function gateProvenance(
  cfg: QrmGateConfig, heads: ReturnType<typeof loadHeads>, headsPath: string,
  pairs: PairFeatures, pairsPath: string, reference: PairFeatures | undefined, referencePath: string | null,
): FeatureProvenance | null {
  const sides = [
    { what: 'heads fitted on features', file: heads.featuresFile ? `${heads.featuresFile}, via ${headsPath}` : headsPath, p: heads.provenance ?? null },
    { what: 'pairs', file: pairsPath, p: pairs.provenance ?? null },
    ...(reference ? [{ what: 'reference', file: referencePath!, p: reference.provenance ?? null }] : []),
  ];
  warnUnrecorded('qrm gate', sides.filter((x) => x.p === null).map((x) => x.file));
  const known = sides.filter((x): x is typeof x & { p: FeatureProvenance } => x.p !== null);
  for (let i = 1; i < known.length; i++) requireSameProvenance('qrm gate', known[0]!, known[i]!, { fix: 'recompute one of them (qrm features, then qrm fit for the heads)' });
  const first = known[0];
  if (!first) return null;
  if (cfg.pooling !== null && cfg.pooling !== first.p.pooling) {
    throw new QrlhfError(`qrm gate: --pooling ${cfg.pooling}, but the ${first.what} ${first.file} were pooled '${first.p.pooling}'; leave --pooling out (it is read from the features) or recompute them`);
  }
  const setting = first.p.chatTemplate.setting;
  const same = (a: string, b: string) => (isChatTemplatePath(a) && isChatTemplatePath(b) ? resolve(a) === resolve(b) : a === b);
  if (cfg.chatTemplate !== null && !same(cfg.chatTemplate, setting)) {
    throw new QrlhfError(`qrm gate: --chat-template ${cfg.chatTemplate}, but the ${first.what} ${first.file} were written with chatTemplate '${setting}'; leave --chat-template out (it is read from the features) or recompute them`);
  }
  return first.p;
}

/**
 * A gate step's metrics row under core's metric names (core track/names.ts; the table is in
 * docs/DESIGN.md, "Metric names"): `step`, train/{epoch, loss, accuracy, lr, grad_norm}, gate/beta, and after
 * each pass's last step with held-out pairs eval/{loss, accuracy}.
 */
export function gateMetricsRow(m: GateProgress): Metrics {
  const row: Metrics = { step: m.step, 'train/epoch': m.passes, 'train/loss': m.loss, 'train/accuracy': m.accuracy, 'train/lr': m.lr, 'train/grad_norm': m.gradNorm, 'gate/beta': m.beta };
  if (m.valLoss !== undefined) row['eval/loss'] = m.valLoss;
  if (m.valAccuracy !== undefined) row['eval/accuracy'] = m.valAccuracy;
  return row;
}

export async function runQrmGate(config: QrmGateConfig, o: StageOptions = {}) {
  const cfg = requireKeys(config, ['heads', 'pairs', 'out'], 'qrm gate');
  checkRunFolderKind(cfg.out, 'qrm'); // before the work: a non-empty folder of another kind is refused (issue 12 item 13)
  const heads = loadHeads(headsFile(cfg.heads));
  const pairsPath = existingFile('pairs', cfg.pairs);
  checkWritable(cfg.out, 'folder');
  if (cfg.metrics) checkWritable(cfg.metrics, 'file');
  await initBackend(cfg.backend, { quiet: o.quiet ?? false });
  const pairs = readPairFeatures(pairsPath);
  const referencePath = cfg.reference === null ? null : existingFile('reference', cfg.reference);
  const reference = referencePath === null ? undefined : readPairFeatures(referencePath);
  const prov = gateProvenance(cfg, heads, headsFile(cfg.heads), pairs, pairsPath, reference, referencePath);
  const backbone = cfg.backbone ?? prov?.backbone.path ?? pairs.backbone ?? null;
  const pooling = (cfg.pooling ?? prov?.pooling ?? 'last') as FeaturePooling; // the QRM refuses a name it does not know
  const chatTemplate = cfg.chatTemplate ?? prov?.chatTemplate.setting ?? 'auto';
  if (cfg.metrics) mkdirSync(dirname(cfg.metrics), { recursive: true });
  const b = bar(o, 0, 'gate');
  const r = await trainQrm({
    heads, pairs, reference,
    verbosity: cfg.verbosity === null ? undefined : cfg.verbosity === 'none' ? null : cfg.verbosity,
    hiddenSize: cfg.hidden, numHidden: cfg.layers, epochs: cfg.epochs, batchSize: cfg.batchSize, lr: cfg.lr,
    weightDecay: cfg.weightDecay, warmupSteps: cfg.warmupSteps, valFraction: cfg.valFraction, seed: cfg.seed,
    mixture: cfg.mixture, pooling, maxTokens: prov?.maxTokens ?? null,
    // undefined: not recorded (older features), so that scoring warns instead of checking nothing silently
    features: prov ?? undefined,
    chatTemplate: isChatTemplatePath(chatTemplate) ? relative(cfg.out, chatTemplate) : chatTemplate,
    // recorded relative to the QRM folder, so that the two can move together
    backbone: backbone === null ? null : relative(cfg.out, backbone) || '.',
    tokenizer: cfg.tokenizer === null ? null : relative(cfg.out, cfg.tokenizer),
    onProgress: (m) => {
      b.update(m.step, `of ${m.totalSteps}: loss ${m.loss.toFixed(4)} acc ${m.accuracy.toFixed(3)}${m.valAccuracy !== undefined ? ` val_acc ${m.valAccuracy.toFixed(3)}` : ''}`);
      if (cfg.metrics) appendFileSync(cfg.metrics, JSON.stringify(gateMetricsRow(m)) + '\n');
    },
  });
  b.done();
  try {
    await r.model.save(cfg.out);
    claimRunFolder(cfg.out, 'qrm');
  } finally {
    r.model.dispose();
  }
  const pen = r.debias.verbosity === null ? 'no verbosity debiasing' : `verbosity "${r.debias.verbosity}", penalties ${heads.attributes.map((x, j) => `${x} ${r.debias.penalties[j]}`).join(', ')}`;
  say(o,
    `qrlhf: wrote ${cfg.out}: ${pen}; ${r.nTrain} training pairs, accuracy ${r.training.trainAccuracy.toFixed(4)}` +
      `${r.training.valAccuracy !== undefined ? `; ${r.nVal} held out, accuracy ${r.training.valAccuracy.toFixed(4)}` : ''}`,
  );
  return { debias: r.debias, training: r.training, nTrain: r.nTrain, nVal: r.nVal };
}

// ---- score / eval ---------------------------------------------------------------------------

/** What scoring with a QRM folder takes: the folder, the utility and how to run the backbone. */
const SCORING_FIELDS = defineConfig({
  model: pathField('QRM folder, written by qrlhf qrm gate (required)'),
  ...UTILITY_FIELDS,
  backbone: pathField('backbone to use instead of the one recorded in qrm.json'),
  mixture: { type: 'string', default: null, nullable: true, choices: MIXTURE_MODES, doc: "the mixing rule instead of qrm.json's: eq3 | mixture" },
  batchSize: { type: 'int', default: 8, min: 1, doc: 'sequences per forward pass' },
  ...RUN_FIELDS,
});
type ScoringConfig = ConfigOf<typeof SCORING_FIELDS>;

async function openScoring(cfg: ScoringConfig, o: StageOptions): Promise<{ model: QuantileRewardModel; utility: Utility }> {
  const c = requireKeys(cfg, ['model'], 'qrm');
  await initBackend(c.backend, { quiet: o.quiet ?? false });
  const utility = await makeUtility({ name: c.utility, lambda: c.lambda, alpha: c.alpha });
  const model = await QuantileRewardModel.load(c.model);
  if (c.backbone !== null) model.backbonePath = c.backbone;
  if (c.mixture !== null) model.mixture = c.mixture;
  return { model, utility };
}

/** Rows scored per call (the progress unit). */
const CHUNK = 64;

export const QRM_SCORE_SCHEMA = defineConfig({
  ...SCORING_FIELDS,
  input: pathField('jsonl of {prompt, response} (required)'),
  out: pathField('output jsonl (null = stdout)'),
  attributes: { type: 'boolean', default: false, doc: 'also write the per-attribute quantiles' },
});
export type QrmScoreConfig = ConfigOf<typeof QRM_SCORE_SCHEMA>;

export async function runQrmScore(config: QrmScoreConfig, o: StageOptions = {}): Promise<void> {
  const cfg = requireKeys(config, ['input'], 'qrm score');
  const input = existingFile('input', cfg.input);
  if (cfg.out !== null) checkWritable(cfg.out, 'file');
  const { model, utility } = await openScoring(cfg, o);
  const lines: string[] = [];
  try {
    const rows: { prompt: string; response: string }[] = [];
    const lineOf: number[] = [];
    for await (const { row, line } of readJsonl(input)) {
      const r = row as Record<string, unknown>;
      if (r === null || typeof r !== 'object' || typeof r['prompt'] !== 'string' || typeof r['response'] !== 'string') {
        throw new QrlhfError(`${input}:${line}: expected {prompt: string, response: string}`);
      }
      rows.push({ prompt: r['prompt'] as string, response: r['response'] as string });
      lineOf.push(line);
    }
    const b = bar(o, rows.length, 'score');
    for (let s = 0; s < rows.length; s += CHUNK) {
      const scores = await model.score(rows.slice(s, s + CHUNK), { batchSize: cfg.batchSize, where: (i) => `${input}:${lineOf[s + i]}` });
      for (const sc of scores) lines.push(JSON.stringify(scoreRecord(sc, model, utility, cfg.attributes)));
      b.update(Math.min(rows.length, s + CHUNK));
    }
    b.done();
  } finally {
    model.dispose();
  }
  const text = lines.join('\n') + (lines.length ? '\n' : '');
  if (cfg.out !== null) {
    writeFileAtomic(cfg.out, text);
    say(o, `qrlhf: wrote ${cfg.out}: ${lines.length} scores`);
  } else process.stdout.write(text);
}

function scoreRecord(s: QrmScore, model: QuantileRewardModel, u: Utility, withAttrs: boolean): Record<string, unknown> {
  const r: Record<string, unknown> = {
    expectation: s.expectation,
    utility: u(s.quantiles, model.taus),
    quantiles: Array.from(s.quantiles),
    gate: Object.fromEntries(model.attributes.map((name, m) => [name, s.gate[m]])),
  };
  if (withAttrs) {
    const K = model.taus.length;
    r['attributeQuantiles'] = Object.fromEntries(model.attributes.map((name, m) => [name, Array.from(s.attributeQuantiles.subarray(m * K, (m + 1) * K))]));
  }
  return r;
}

export const QRM_EVAL_SCHEMA = defineConfig({
  ...SCORING_FIELDS,
  data: pathField('jsonl of {prompt, chosen, rejected, subset} (give this or llmbar)'),
  llmbar: {
    type: 'string', default: null, nullable: true, path: (v: string) => v !== 'shared',
    doc: 'folder of LLMBar files (Natural.json, Adversarial_*.json); "shared" = ../shared/data/llmbar (give this or data)',
  },
  maxRows: { type: 'int', default: null, nullable: true, min: 1, doc: 'use only the first N rows (null = all)' },
  out: pathField('write the result as JSON here (null = only the table on stdout)'),
});
export type QrmEvalConfig = ConfigOf<typeof QRM_EVAL_SCHEMA>;

export async function runQrmEval(cfg: QrmEvalConfig, o: StageOptions = {}) {
  if ((cfg.data === null) === (cfg.llmbar === null)) throw new QrlhfError('qrm eval: give exactly one of --data (jsonl) or --llmbar (folder)');
  if (cfg.out !== null) checkWritable(cfg.out, 'file');
  let rows: PreferenceRow[] = [];
  if (cfg.data !== null) {
    existingFile('data', cfg.data);
    for await (const { row, line } of readJsonl(cfg.data)) {
      if (cfg.maxRows !== null && rows.length >= cfg.maxRows) break;
      rows.push(toPreferenceRow(row, `${cfg.data}:${line}`));
    }
  } else {
    let dir = cfg.llmbar!;
    if (dir === 'shared') {
      const shared = sharedDataDir();
      if (!shared) throw new QrlhfError('--llmbar shared: no ../shared/data folder beside the repository');
      dir = join(shared, 'llmbar');
    }
    rows = loadLlmbar(dir);
    if (cfg.maxRows !== null) rows = rows.slice(0, cfg.maxRows);
  }
  if (rows.length === 0) throw new QrlhfError('qrm eval: no evaluation rows');
  const { model, utility } = await openScoring(cfg, o);
  const scored: { subset: string; chosen: number; rejected: number }[] = [];
  const b = bar(o, rows.length, 'eval');
  try {
    for (let s = 0; s < rows.length; s += CHUNK) {
      const chunk = rows.slice(s, s + CHUNK);
      const items = chunk.flatMap((r) => [{ prompt: r.prompt, response: r.chosen }, { prompt: r.prompt, response: r.rejected }]);
      const sc = await model.score(items, { batchSize: cfg.batchSize, where: (i) => `pair ${s + Math.floor(i / 2) + 1} (${i % 2 === 0 ? 'chosen' : 'rejected'})` });
      chunk.forEach((r, i) => scored.push({ subset: r.subset, chosen: utility(sc[2 * i]!.quantiles, model.taus), rejected: utility(sc[2 * i + 1]!.quantiles, model.taus) }));
      b.update(Math.min(rows.length, s + CHUNK));
    }
    b.done();
  } finally {
    model.dispose();
  }
  const res = rewardBenchScore(scored);
  const pct = (x: number) => (100 * x).toFixed(2).padStart(7);
  const table = [
    ...Object.keys(res.subsets).sort().map((s) => `${s.padEnd(26)} ${pct(res.subsets[s]!)}  (${res.counts[s]} pairs)`),
    ...Object.entries(res.sections).map(([s, v]) => `[${s}]`.padEnd(26) + ` ${pct(v)}`),
    `${'overall'.padEnd(26)} ${pct(res.overall)}`,
  ];
  process.stdout.write(table.join('\n') + '\n');
  if (cfg.out !== null) {
    writeFileAtomic(cfg.out, JSON.stringify(res, null, 2) + '\n');
    say(o, `qrlhf: wrote ${cfg.out}`);
  }
  return res;
}

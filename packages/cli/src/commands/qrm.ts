/**
 * `qrlhf qrm features|fit|gate|score|eval`: the quantile reward model from the command line.
 * Thin: flags are parsed and checked here, the work is done by @qrlhf/qrm.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import yargs from 'yargs';
import type { Argv, CommandModule } from 'yargs';
import { BACKEND_NAMES, QrlhfError, Rng, Tokenizer, configFromHf, initBackend, loadModel, readJsonl, sharedDataDir, writeFileAtomic } from '@qrlhf/core';
import {
  QuantileRewardModel,
  extractPairFeatures,
  extractRatingFeatures,
  openAiFeatureSource,
  type FeatureSource,
  fitQuantileHeads,
  formatFitReport,
  loadHeads,
  loadLlmbar,
  makeUtility,
  readPairFeatures,
  readRatingFeatures,
  rewardBenchScore,
  saveHeads,
  toPreferenceRow,
  trainQrm,
  type PreferenceRow,
  type QrmScore,
  type Utility,
  FEATURE_POOLINGS,
  type FeaturePooling,
} from '@qrlhf/qrm';
import { handle } from '../run.js';
import { backendFlag, intFlag, numFlag, optionalString, requiredString } from './generate.js';

type Args = Record<string, unknown>;

/** A progress line on stderr, rewritten at most every 0.5 s (and once at the end). */
function progress(label: string): { tick: (done: number, total: number, info?: string) => void; done: () => void } {
  let last = 0;
  let line = '';
  const tty = process.stderr.isTTY === true;
  return {
    tick(done, total, info) {
      const now = Date.now();
      line = `${label}: ${done}/${total}${info ? ` ${info}` : ''}`;
      if (now - last < 500 && done < total) return;
      last = now;
      process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
    },
    done() {
      if (tty && line) process.stderr.write('\n');
    },
  };
}

function existingFile(flag: string, p: string): string {
  if (!existsSync(p)) throw new QrlhfError(`--${flag} ${p}: no such file`);
  return p;
}

function mixtureFlag(v: unknown): 'eq3' | 'mixture' {
  const s = optionalString('mixture', v) ?? 'eq3';
  if (s !== 'eq3' && s !== 'mixture') throw new QrlhfError(`--mixture: expected eq3 or mixture, got ${JSON.stringify(s)}`);
  return s;
}

const backendOption = { type: 'string', describe: `tfjs backend: ${BACKEND_NAMES.join(' | ')} (default auto)` } as const;

// ---- features -------------------------------------------------------------------------------

const featuresCommand: CommandModule = {
  command: 'features',
  describe: 'Run a frozen backbone over ratings (stage 1) or preference pairs (stage 2) and cache the features (ArmoRM layout)',
  builder: (y: Argv) =>
    y
      .option('model', { type: 'string', describe: 'Backbone: Hugging Face folder or llama2.c .bin (required)' })
      .option('tokenizer', { type: 'string', describe: 'Tokenizer (default: beside the model)' })
      .option('ratings', { type: 'string', describe: 'Stage 1 input: jsonl {prompt, response, <attribute>: number|null, ...}' })
      .option('pairs', { type: 'string', describe: 'Stage 2 input: jsonl {prompt, chosen, rejected}' })
      .option('out', { type: 'string', describe: 'Output .safetensors (required); an interrupted run resumes from OUT.parts/' })
      .option('attributes', { type: 'string', describe: 'Stage 1: comma-separated attribute columns (default: all numeric fields)' })
      .option('batch-size', { type: 'string', describe: 'Sequences per forward pass (default 8)' })
      .option('shard-size', { type: 'string', describe: 'Rows per resumable shard (default 512)' })
      .option('max-tokens', { type: 'string', describe: "Longest sequence; longer ones lose their first tokens (default: the model's context)" })
      .option('max-rows', { type: 'string', describe: 'Use only the first N rows' })
      .option('pooling', { type: 'string', describe: "Response feature: 'last' token (default, SPEC §4) or 'mean' over the response's tokens" })
      .option('engine', { type: 'string', describe: 'local (default: the backbone in this process) | openai (POST /v1/embeddings on --base-url; --model then gives only the tokenizer and config)' })
      .option('base-url', { type: 'string', describe: 'openai: the embedding server(s), e.g. http://127.0.0.1:8000/v1 (comma-separated for several)' })
      .option('engine-model', { type: 'string', describe: "openai: the model's name on the server (default: the --model folder's name)" })
      .option('backend', backendOption)
      .example('$0 qrm features --model M --ratings r.jsonl --out f1.safetensors --engine openai --base-url http://127.0.0.1:8000/v1', 'features from a served backbone (vLLM or qrlhf serve)'),
  handler: handle(async (a: Args) => {
    const modelPath = requiredString('model', a['model'], 'the frozen backbone');
    const pooling = poolingFlag(a['pooling']);
    const out = requiredString('out', a['out'], 'the features file to write');
    const ratings = optionalString('ratings', a['ratings']);
    const pairs = optionalString('pairs', a['pairs']);
    if ((ratings === undefined) === (pairs === undefined)) throw new QrlhfError('give exactly one of --ratings (stage 1) or --pairs (stage 2)');
    const input = existingFile(ratings !== undefined ? 'ratings' : 'pairs', (ratings ?? pairs)!);
    const tokenizerPath = optionalString('tokenizer', a['tokenizer']);
    const batchSize = intFlag('batch-size', a['batch-size'], { min: 1, dflt: 8 })!;
    const shardSize = intFlag('shard-size', a['shard-size'], { min: 1, dflt: 512 })!;
    const maxTokens = intFlag('max-tokens', a['max-tokens'], { min: 2 });
    const maxRows = intFlag('max-rows', a['max-rows'], { min: 1 });
    const attrs = optionalString('attributes', a['attributes']);
    const attributes = attrs === undefined ? undefined : attrs.split(',').map((s) => s.trim()).filter((s) => s !== '');
    const engine = optionalString('engine', a['engine']) ?? 'local';
    if (engine !== 'local' && engine !== 'openai') throw new QrlhfError(`--engine: expected local or openai, got ${JSON.stringify(engine)}`);
    let source: FeatureSource | null = null;
    let loaded: Awaited<ReturnType<typeof loadModel>> | null = null;
    if (engine === 'openai') {
      const urls = (requiredString('base-url', a['base-url'], 'the embedding server (--engine openai)')).split(',').map((u) => u.trim()).filter(Boolean);
      const cfgPath = join(modelPath, 'config.json');
      if (!existsSync(cfgPath)) throw new QrlhfError(`${modelPath}: --engine openai needs the backbone's Hugging Face folder for its config.json and tokenizer (no ${cfgPath})`);
      const config = configFromHf(JSON.parse(readFileSync(cfgPath, 'utf8')), cfgPath);
      const tokenizer = await Tokenizer.fromFile(tokenizerPath ?? modelPath, config);
      source = await openAiFeatureSource({
        baseUrls: urls,
        model: optionalString('engine-model', a['engine-model']) ?? resolve(modelPath).split(/[\\/]/).pop()!,
        tokenizer,
        maxTokens: maxTokens ?? config.maxPositionEmbeddings,
        batchSize,
      });
    } else {
      await initBackend(backendFlag(a['backend']));
      loaded = await loadModel(modelPath, tokenizerPath === undefined ? {} : { tokenizer: tokenizerPath });
    }
    const bar = progress(ratings !== undefined ? 'features (stage 1)' : 'features (stage 2)');
    try {
      const opts = {
        input,
        output: out,
        ...(source ? { source } : { backbone: { model: loaded!.model, tokenizer: loaded!.tokenizer } }),
        backboneRef: resolve(modelPath),
        batchSize,
        shardSize,
        maxTokens,
        maxRows,
        attributes,
        pooling,
        onProgress: (done: number, total: number) => bar.tick(done, total, 'rows'),
      };
      const r = ratings !== undefined ? await extractRatingFeatures(opts) : await extractPairFeatures(opts);
      bar.done();
      process.stderr.write(
        `qrlhf: wrote ${out}: ${r.n} rows, d = ${r.d}${r.attributes ? `, attributes ${r.attributes.join(', ')}` : ''}` +
          `${r.resumedShards ? ` (resumed after ${r.resumedShards} shards)` : ''}${r.truncated ? `; ${r.truncated} sequences cut to --max-tokens` : ''}\n`,
      );
    } finally {
      loaded?.model.dispose();
    }
  }),
};

function poolingFlag(v: unknown): FeaturePooling {
  if (v === undefined) return 'last';
  if (typeof v !== 'string' || !FEATURE_POOLINGS.includes(v as FeaturePooling)) {
    throw new QrlhfError(`--pooling: expected one of ${FEATURE_POOLINGS.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as FeaturePooling;
}

// ---- fit ------------------------------------------------------------------------------------

const fitCommand: CommandModule = {
  command: 'fit',
  describe:
    'Stage 1: fit the linear quantile heads (pinball loss + alpha·L1) on stage-1 features; writes OUT/heads.safetensors and ' +
    'OUT/fit-report.json (per attribute and level: objective, certified lower bound of the optimum, relative gap, iterations, ' +
    'finish = lp | gap | stall | limit; on the [0, 1] label scale) and prints that table',
  builder: (y: Argv) =>
    y
      .option('features', { type: 'string', describe: 'Stage-1 features: {embeddings [N, d], labels [N, M]} (required)' })
      .option('out', { type: 'string', describe: 'Output folder; heads.safetensors is written into it (required)' })
      .option('alpha', { type: 'string', describe: 'L1 penalty (default 0.003)' })
      .option('quantiles', { type: 'string', describe: 'Number of levels K, tau_k = k/(K+1) (default 19)' })
      .option('max-rows', { type: 'string', describe: 'Labelled rows per attribute at most, a seeded random subset (default 60000)' })
      .option('seed', { type: 'string', describe: 'Seed of the row subsampling (default 0)' })
      .option('time-limit', { type: 'string', describe: 'Seconds per attribute for the first-order phase (default: none)' })
      .option('tolerance', { type: 'string', describe: 'A level stops once its certified relative gap is below this (default 1e-4)' }),
  handler: handle(async (a: Args) => {
    const featuresPath = existingFile('features', requiredString('features', a['features'], 'a stage-1 features file'));
    const out = requiredString('out', a['out'], 'the folder to write heads.safetensors into');
    const alpha = numFlag('alpha', a['alpha'], { min: 0, max: Infinity, dflt: 0.003 })!;
    const K = intFlag('quantiles', a['quantiles'], { min: 1, max: 999, dflt: 19 })!;
    const maxRows = intFlag('max-rows', a['max-rows'], { min: 1, dflt: 60000 })!;
    const seed = intFlag('seed', a['seed'], { min: 0, max: 2 ** 32 - 1, dflt: 0 })!;
    const timeLimit = numFlag('time-limit', a['time-limit'], { min: 0, max: Infinity });
    const tolerance = numFlag('tolerance', a['tolerance'], { min: 0, max: 1 });
    if (existsSync(out) && !statSync(out).isDirectory()) throw new QrlhfError(`--out ${out}: exists and is not a folder`);
    const f = readRatingFeatures(featuresPath);
    const t0 = Date.now();
    const bar = progress('fit');
    const heads = fitQuantileHeads(f.embeddings, f.n, f.d, f.labels, {
      attributes: f.attributes,
      K,
      alpha,
      maxRows,
      rng: new Rng(seed),
      ...(timeLimit !== undefined ? { timeLimit } : {}),
      ...(tolerance !== undefined ? { tolerance } : {}),
      onProgress: (p) =>
        bar.tick(p.index, f.attributes.length, `attributes done; ${p.attribute}: iteration ${p.iteration}, worst gap ${p.worstGap.toExponential(2)}`),
    });
    bar.done();
    mkdirSync(out, { recursive: true });
    const path = join(out, 'heads.safetensors');
    saveHeads(path, heads);
    const reportPath = join(out, 'fit-report.json');
    writeFileAtomic(reportPath, JSON.stringify(heads.report, null, 2) + '\n');
    process.stdout.write(formatFitReport(heads.report) + '\n');
    process.stderr.write(
      `qrlhf: wrote ${path}: ${f.attributes.length} attributes x ${K} levels on d = ${f.d} (${f.n} rows, ${((Date.now() - t0) / 1000).toFixed(1)} s) and ${reportPath}\n`,
    );
  }),
};

// ---- gate -----------------------------------------------------------------------------------

function headsPath(p: string): string {
  const file = existsSync(p) && statSync(p).isDirectory() ? join(p, 'heads.safetensors') : p;
  if (!existsSync(file)) throw new QrlhfError(`--heads ${p}: no heads.safetensors there (run qrlhf qrm fit first)`);
  return file;
}

const gateCommand: CommandModule = {
  command: 'gate',
  describe: 'Stage 2: verbosity penalties, then train the gating network (Bradley-Terry on the mixture expectation); writes the QRM folder',
  builder: (y: Argv) =>
    y
      .option('heads', { type: 'string', describe: 'heads.safetensors or the folder holding it (required)' })
      .option('pairs', { type: 'string', describe: 'Stage-2 features of preference pairs (required)' })
      .option('reference', { type: 'string', describe: 'Stage-2 features that set the verbosity penalties (default: --pairs)' })
      .option('out', { type: 'string', describe: 'QRM folder to write (heads.safetensors, gate.safetensors, qrm.json) (required)' })
      .option('verbosity', { type: 'string', describe: 'Verbosity attribute, or "none" (default: the attribute named verbosity, if any)' })
      .option('backbone', { type: 'string', describe: "Backbone recorded in qrm.json for scoring text (default: the features file's)" })
      .option('tokenizer', { type: 'string', describe: 'Tokenizer recorded in qrm.json (default: beside the backbone)' })
      .option('epochs', { type: 'string', describe: 'Epochs (default 3)' })
      .option('batch-size', { type: 'string', describe: 'Pairs per step (default 1024)' })
      .option('lr', { type: 'string', describe: 'Peak learning rate of the cosine schedule (default 3e-4)' })
      .option('weight-decay', { type: 'string', describe: 'AdamW decoupled weight decay (default 1e-3)' })
      .option('warmup-steps', { type: 'string', describe: 'Linear warm-up steps (default 0)' })
      .option('hidden', { type: 'string', describe: 'Width of the hidden layers (default 1024)' })
      .option('layers', { type: 'string', describe: 'Number of hidden layers (default 3)' })
      .option('val-fraction', { type: 'string', describe: 'Share of pairs held out for accuracy (default 0.1)' })
      .option('mixture', { type: 'string', describe: 'eq3 (the paper: weighted sum of quantile functions, default) | mixture (quantiles of the mixture distribution)' })
      .option('pooling', { type: 'string', describe: "The response-feature pooling the features were extracted with (last | mean), recorded for scoring" })
      .option('metrics', { type: 'string', describe: 'Append per-step metrics as JSON lines to this file' })
      .option('seed', { type: 'string', describe: 'Seed of the split, the init and the shuffling (default 0)' })
      .option('backend', backendOption),
  handler: handle(async (a: Args) => {
    const heads = loadHeads(headsPath(requiredString('heads', a['heads'], 'the stage-1 heads')));
    const pairsPath = existingFile('pairs', requiredString('pairs', a['pairs'], 'stage-2 features of preference pairs'));
    const out = requiredString('out', a['out'], 'the QRM folder to write');
    const refPath = optionalString('reference', a['reference']);
    const v = optionalString('verbosity', a['verbosity']);
    const epochs = intFlag('epochs', a['epochs'], { min: 1, dflt: 3 })!;
    const batchSize = intFlag('batch-size', a['batch-size'], { min: 1, dflt: 1024 })!;
    const lr = numFlag('lr', a['lr'], { min: 0, max: Infinity, minOpen: true, dflt: 3e-4 })!;
    const weightDecay = numFlag('weight-decay', a['weight-decay'], { min: 0, max: Infinity, dflt: 1e-3 })!;
    const warmupSteps = intFlag('warmup-steps', a['warmup-steps'], { min: 0, dflt: 0 })!;
    const hiddenSize = intFlag('hidden', a['hidden'], { min: 1, dflt: 1024 })!;
    const numHidden = intFlag('layers', a['layers'], { min: 0, max: 16, dflt: 3 })!;
    const valFraction = numFlag('val-fraction', a['val-fraction'], { min: 0, max: 0.9, dflt: 0.1 })!;
    const seed = intFlag('seed', a['seed'], { min: 0, max: 2 ** 32 - 1, dflt: 0 })!;
    const mixture = mixtureFlag(a['mixture']);
    const metrics = optionalString('metrics', a['metrics']);
    await initBackend(backendFlag(a['backend']));
    const pairs = readPairFeatures(pairsPath);
    const reference = refPath === undefined ? undefined : readPairFeatures(existingFile('reference', refPath));
    const backboneFlag = optionalString('backbone', a['backbone']);
    const backboneAbs = backboneFlag !== undefined ? resolve(backboneFlag) : pairs.backbone ? pairs.backbone : null;
    if (metrics) mkdirSync(dirname(resolve(metrics)), { recursive: true });
    const tok = optionalString('tokenizer', a['tokenizer']);
    const bar = progress('gate');
    const r = trainQrm({
      heads, pairs, reference,
      verbosity: v === undefined ? undefined : v === 'none' ? null : v,
      hiddenSize, numHidden, epochs, batchSize, lr, weightDecay, warmupSteps, valFraction, seed, mixture,
      pooling: poolingFlag(a['pooling']),
      // recorded relative to the QRM folder, so that the two can move together
      backbone: backboneAbs === null ? null : relative(resolve(out), backboneAbs) || '.',
      tokenizer: tok === undefined ? null : relative(resolve(out), resolve(tok)),
      onProgress: (m) => {
        bar.tick(m.step, m.totalSteps, `loss ${m.loss.toFixed(4)} acc ${m.accuracy.toFixed(3)}${m.valAccuracy !== undefined ? ` val_acc ${m.valAccuracy.toFixed(3)}` : ''}`);
        if (metrics) appendFileSync(metrics, JSON.stringify({ stage: 'gate', ...m }) + '\n');
      },
    });
    bar.done();
    const model = r.model;
    try {
      model.save(out);
    } finally {
      model.dispose();
    }
    const pen = r.debias.verbosity === null ? 'no verbosity debiasing' : `verbosity "${r.debias.verbosity}", penalties ${heads.attributes.map((x, j) => `${x} ${r.debias.penalties[j]}`).join(', ')}`;
    process.stderr.write(
      `qrlhf: wrote ${out}: ${pen}; ${r.nTrain} training pairs, accuracy ${r.training.trainAccuracy.toFixed(4)}` +
        `${r.training.valAccuracy !== undefined ? `; ${r.nVal} held out, accuracy ${r.training.valAccuracy.toFixed(4)}` : ''}\n`,
    );
  }),
};

// ---- score / eval ---------------------------------------------------------------------------

async function openModel(a: Args): Promise<QuantileRewardModel> {
  const dir = requiredString('model', a['model'], 'a QRM folder (written by qrlhf qrm gate)');
  const model = await QuantileRewardModel.load(dir);
  const bb = optionalString('backbone', a['backbone']);
  if (bb !== undefined) model.backbonePath = resolve(bb);
  const mix = optionalString('mixture', a['mixture']);
  if (mix !== undefined) model.mixture = mixtureFlag(mix);
  return model;
}

async function utilityFrom(a: Args): Promise<Utility> {
  return makeUtility({
    name: optionalString('utility', a['utility']) ?? 'expectation',
    lambda: numFlag('lambda', a['lambda'], { min: 0, max: Infinity, minOpen: true }),
    alpha: numFlag('alpha', a['alpha'], { min: 0, max: 1, minOpen: true }),
  });
}

const utilityOptions = (y: Argv) =>
  y
    .option('utility', { type: 'string', describe: 'expectation | exponential | certainty-equivalent | cvar | path of a module (default expectation)' })
    .option('lambda', { type: 'string', describe: 'Risk aversion of exponential / certainty-equivalent (default 1)' })
    .option('alpha', { type: 'string', describe: 'Tail level of cvar (default 0.25)' })
    .option('backbone', { type: 'string', describe: 'Backbone to use instead of the one recorded in qrm.json' })
    .option('mixture', { type: 'string', describe: 'Override the mixing rule: eq3 | mixture' })
    .option('batch-size', { type: 'string', describe: 'Sequences per forward pass (default 8)' })
    .option('backend', backendOption);

const CHUNK = 64;

const scoreCommand: CommandModule = {
  command: 'score',
  describe: 'Score {prompt, response} rows: K reward quantiles, expectation, utility, gate weights (jsonl out)',
  builder: (y: Argv) =>
    utilityOptions(
      y
        .option('model', { type: 'string', describe: 'QRM folder (required)' })
        .option('input', { type: 'string', describe: 'jsonl of {prompt, response} (required)' })
        .option('out', { type: 'string', describe: 'Output jsonl (default: stdout)' })
        .option('attributes', { type: 'boolean', describe: 'Also write the per-attribute quantiles' }),
    ),
  handler: handle(async (a: Args) => {
    const input = existingFile('input', requiredString('input', a['input'], 'a jsonl of {prompt, response}'));
    const outPath = optionalString('out', a['out']);
    const batchSize = intFlag('batch-size', a['batch-size'], { min: 1, dflt: 8 })!;
    const withAttrs = a['attributes'] === true;
    await initBackend(backendFlag(a['backend']));
    const utility = await utilityFrom(a);
    const model = await openModel(a);
    const lines: string[] = [];
    const bar = progress('score');
    try {
      const rows: { prompt: string; response: string }[] = [];
      for await (const { row, line } of readJsonl(input)) {
        const o = row as Record<string, unknown>;
        if (o === null || typeof o !== 'object' || typeof o['prompt'] !== 'string' || typeof o['response'] !== 'string') {
          throw new QrlhfError(`${input}:${line}: expected {prompt: string, response: string}`);
        }
        rows.push({ prompt: o['prompt'] as string, response: o['response'] as string });
      }
      for (let s = 0; s < rows.length; s += CHUNK) {
        const scores = await model.score(rows.slice(s, s + CHUNK), { batchSize });
        for (const sc of scores) lines.push(JSON.stringify(scoreRecord(sc, model, utility, withAttrs)));
        bar.tick(Math.min(rows.length, s + CHUNK), rows.length, 'rows');
      }
      bar.done();
    } finally {
      model.dispose();
    }
    const text = lines.join('\n') + (lines.length ? '\n' : '');
    if (outPath) {
      writeFileAtomic(outPath, text);
      process.stderr.write(`qrlhf: wrote ${outPath}: ${lines.length} scores\n`);
    } else process.stdout.write(text);
  }),
};

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

const evalCommand: CommandModule = {
  command: 'eval',
  describe: "Evaluate on preference rows with RewardBench's rule (a tie is wrong; per subset, section and overall)",
  builder: (y: Argv) =>
    utilityOptions(
      y
        .option('model', { type: 'string', describe: 'QRM folder (required)' })
        .option('data', { type: 'string', describe: 'jsonl of {prompt, chosen, rejected, subset}' })
        .option('llmbar', { type: 'string', describe: 'Folder of LLMBar files (Natural.json, Adversarial_*.json); "shared" = ../shared/data/llmbar' })
        .option('max-rows', { type: 'string', describe: 'Use only the first N rows' })
        .option('out', { type: 'string', describe: 'Write the result as JSON here' }),
    ),
  handler: handle(async (a: Args) => {
    const data = optionalString('data', a['data']);
    let llmbar = optionalString('llmbar', a['llmbar']);
    if ((data === undefined) === (llmbar === undefined)) throw new QrlhfError('give exactly one of --data (jsonl) or --llmbar (folder)');
    const maxRows = intFlag('max-rows', a['max-rows'], { min: 1 });
    const batchSize = intFlag('batch-size', a['batch-size'], { min: 1, dflt: 8 })!;
    const outPath = optionalString('out', a['out']);
    let rows: PreferenceRow[] = [];
    if (data !== undefined) {
      existingFile('data', data);
      for await (const { row, line } of readJsonl(data)) {
        if (maxRows !== undefined && rows.length >= maxRows) break;
        rows.push(toPreferenceRow(row, `${data}:${line}`));
      }
    } else {
      if (llmbar === 'shared') {
        const dir = sharedDataDir();
        if (!dir) throw new QrlhfError('--llmbar shared: no ../shared/data folder beside the repository');
        llmbar = join(dir, 'llmbar');
      }
      rows = loadLlmbar(llmbar!);
      if (maxRows !== undefined) rows = rows.slice(0, maxRows);
    }
    if (rows.length === 0) throw new QrlhfError('no evaluation rows');
    await initBackend(backendFlag(a['backend']));
    const utility = await utilityFrom(a);
    const model = await openModel(a);
    const scored: { subset: string; chosen: number; rejected: number }[] = [];
    const bar = progress('eval');
    try {
      for (let s = 0; s < rows.length; s += CHUNK) {
        const chunk = rows.slice(s, s + CHUNK);
        const items = chunk.flatMap((r) => [{ prompt: r.prompt, response: r.chosen }, { prompt: r.prompt, response: r.rejected }]);
        const sc = await model.score(items, { batchSize });
        chunk.forEach((r, i) => scored.push({ subset: r.subset, chosen: utility(sc[2 * i]!.quantiles, model.taus), rejected: utility(sc[2 * i + 1]!.quantiles, model.taus) }));
        bar.tick(Math.min(rows.length, s + CHUNK), rows.length, 'pairs');
      }
      bar.done();
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
    if (outPath) {
      writeFileAtomic(outPath, JSON.stringify(res, null, 2) + '\n');
      process.stderr.write(`qrlhf: wrote ${outPath}\n`);
    }
  }),
};

export const qrmCommand: CommandModule = {
  command: 'qrm <command>',
  describe: 'Quantile reward model: features, fit (stage 1), gate (stage 2), score, eval',
  builder: (y: Argv) =>
    y
      .command(featuresCommand)
      .command(fitCommand)
      .command(gateCommand)
      .command(scoreCommand)
      .command(evalCommand)
      .demandCommand(1, 'name a qrm command: features, fit, gate, score or eval'),
  handler: () => {},
};

/**
 * Runs `qrlhf qrm ...` inside this process (scripts, tests): parse errors and user faults are
 * thrown instead of exiting; returns the text yargs printed (help). Handlers still end the
 * process on a fault through handle(), as on the command line.
 */
export async function runQrmInProcess(args: string[]): Promise<string> {
  const printed: string[] = [];
  const log = console.log;
  console.log = (...x: unknown[]) => void printed.push(x.join(' '));
  try {
    await yargs()
      .scriptName('qrlhf')
      .command(qrmCommand)
      .strict()
      .exitProcess(false)
      .fail((msg, err) => {
        throw err ?? new QrlhfError(msg);
      })
      .parseAsync(args);
  } finally {
    console.log = log;
  }
  return printed.join('\n');
}

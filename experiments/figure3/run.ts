/**
 * The paper's Figure 3, end to end, in the synthetic world of @qrlhf/world where every reward
 * distribution is known:
 *
 *   data → base model (pretrained here) → SFT with LoRA (merged) → QRM features (stage 1 ratings,
 *   stage 2 pairs) → quantile heads → gate → RLOO with the expectation and with the exponential
 *   utility, over several seeds → final evaluation (QRM estimate and truth) → figure and summary.
 *
 * Usage: npm run figure3 [-- --out DIR] [-- --config FILE] [-- --<key> VALUE ...]
 * Every stage keeps its outputs under the run folder and marks itself done (`.done`); a rerun
 * skips finished stages, and an interrupted SFT or RLOO run resumes from its last checkpoint.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  QrlhfError,
  claimRunFolder,
  Rng,
  applyOverrides,
  generate,
  initBackend,
  loadConfigFile,
  loadLoraAdapter,
  loadModel,
  parseConfig,
  repoRoot,
  writeFileAtomic,
  type BackendName,
} from '@qrlhf/core';
import { createWorld, writeWorldData, parseResponse, type World, type WorldFiles } from '@qrlhf/world';
import { runSft, sftDefaults } from '@qrlhf/sft';
import {
  QuantileRewardModel,
  extractPairFeatures,
  extractRatingFeatures,
  fitQuantileHeads,
  readPairFeatures,
  readRatingFeatures,
  trainQrm,
} from '@qrlhf/qrm';
import { figure3Svg, readMetricsFile, svgToPng } from '@qrlhf/rloo';
import { FIGURE3_SCHEMA, type Figure3Config } from './config.js';
import { pretrainBase } from './pretrain.js';
import { meanAbsError, meanOver, meanQuantiles, summaryMarkdown, SUMMARY_KEYS, type RunSummary } from './summary.js';
import { NormalisedQrm, runRlStage, RUNS } from './rl.js';

function log(msg: string): void {
  process.stderr.write(`[figure3] ${msg}\n`);
}

/**
 * Runs `fn` unless `dir/.done` exists; marks the stage done with its inputs (the settings it and
 * the stages before it depend on) and what fn returned. A finished stage whose inputs differ from
 * the current settings is an error, not silently reused: its outputs belong to another experiment.
 */
const stageSeconds: Record<string, number> = {};

async function stage<T>(name: string, dir: string, inputs: Record<string, unknown>, fn: () => Promise<T>): Promise<T> {
  const marker = join(dir, '.done');
  if (existsSync(marker)) {
    const done = JSON.parse(readFileSync(marker, 'utf8')) as { inputs?: Record<string, unknown>; result: T; seconds?: number };
    const changed = Object.keys({ ...inputs, ...done.inputs }).filter(
      (k) => JSON.stringify(done.inputs?.[k]) !== JSON.stringify(inputs[k]),
    );
    if (changed.length) {
      throw new QrlhfError(
        `${name}: ${dir} was made with other settings (${changed
          .map((k) => `${k}: ${JSON.stringify(done.inputs?.[k])} then, ${JSON.stringify(inputs[k])} now`)
          .join('; ')}); use another --out, or delete that folder to redo it and what follows`,
      );
    }
    log(`${name}: done already (${dir}), skipped`);
    stageSeconds[name] = done.seconds ?? NaN;
    return done.result;
  }
  const t0 = Date.now();
  log(`${name}: starting`);
  mkdirSync(dir, { recursive: true });
  const result = await fn();
  const seconds = (Date.now() - t0) / 1000;
  writeFileAtomic(marker, JSON.stringify({ inputs, result, seconds }, null, 2) + '\n');
  stageSeconds[name] = seconds;
  log(`${name}: done in ${seconds.toFixed(1)} s`);
  return result;
}

/** The settings each stage depends on (its own and those of the stages before it). */
function stageInputs(cfg: Figure3Config) {
  const pick = <K extends keyof Figure3Config>(...keys: K[]) => Object.fromEntries(keys.map((k) => [k, cfg[k]]));
  const data = pick('worldSeed', 'pretrainDialogues', 'sftDialogues', 'ratedResponses', 'ratersPerResponse', 'preferencePairs', 'rlPrompts', 'evalPrompts');
  const pretrain = { ...data, ...pick('hiddenSize', 'layers', 'heads', 'kvHeads', 'ffnSize', 'pretrainSteps', 'pretrainBatch', 'pretrainLr') };
  const sft = { ...pretrain, ...pick('sftSteps', 'sftBatch', 'sftLr', 'loraR', 'loraAlpha', 'maxNewTokens') };
  const qrm = { ...pretrain, ...pick('pooling', 'quantiles', 'l1', 'gateHidden', 'gateEpochs', 'gateBatch') };
  const rl = { ...sft, ...qrm, ...pick('rlSteps', 'rlPromptsPerStep', 'k', 'rlLr', 'betaKl', 'lambda', 'temperature') };
  return { data, pretrain, sft, qrm, rl };
}

/**
 * Flags: `--config FILE` (default configs/figure3.json), then any key of FIGURE3_SCHEMA as
 * `--key VALUE` or `--key=VALUE` (kebab-case too: --rl-steps 20; lists comma-separated: --seeds 1,2).
 */
function parseCli(argv: string[]): Figure3Config {
  const flags: Record<string, unknown> = {};
  let configFile = join(repoRoot(), 'configs', 'figure3.json');
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new QrlhfError(`unexpected argument "${arg}": flags are --key value (e.g. --out runs/x)`);
    const eq = arg.indexOf('=');
    const key = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    let raw: string;
    if (eq > 0) raw = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new QrlhfError(`--${key} needs a value`);
      raw = next;
      i++;
    }
    if (key === 'config') {
      configFile = raw;
      continue;
    }
    const num = Number(raw);
    flags[key] = raw.includes(',') ? raw.split(',').map((x) => (x.trim() !== '' && Number.isFinite(Number(x)) ? Number(x) : x)) : raw.trim() !== '' && Number.isFinite(num) ? num : raw;
  }
  const base = existsSync(configFile) ? loadConfigFile(FIGURE3_SCHEMA, configFile) : parseConfig(FIGURE3_SCHEMA, {}, 'defaults');
  return applyOverrides(FIGURE3_SCHEMA, base, flags, { strict: true });
}

async function main(): Promise<void> {
  const cfg = parseCli(process.argv.slice(2));
  const out = resolve(cfg.out);
  mkdirSync(out, { recursive: true });
  writeFileAtomic(join(out, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  await initBackend(cfg.backend as BackendName);
  const t0 = Date.now();
  const world = createWorld(cfg.worldSeed);

  // 1. The world's datasets.
  const dataDir = join(out, 'data');
  const inputs = stageInputs(cfg);
  const files = await stage('data', dataDir, inputs.data, async () =>
    writeWorldData(world, dataDir, {
      pretrain: cfg.pretrainDialogues,
      sft: cfg.sftDialogues,
      ratings: cfg.ratedResponses,
      ratersPerResponse: cfg.ratersPerResponse,
      pairs: cfg.preferencePairs,
      prompts: cfg.rlPrompts,
      evalPrompts: cfg.evalPrompts,
    }),
  ) as WorldFiles;

  // 2. A tiny base model, pretrained on the world's dialogues.
  const baseDir = join(out, 'base');
  await stage('pretrain', join(out, 'pretrain'), inputs.pretrain, async () =>
    pretrainBase({
      corpus: files.pretrain,
      tokenizer: files.tokenizer,
      out: baseDir,
      steps: cfg.pretrainSteps,
      batchSize: cfg.pretrainBatch,
      lr: cfg.pretrainLr,
      warmupSteps: Math.min(30, Math.floor(cfg.pretrainSteps / 10)),
      seed: cfg.worldSeed,
      model: {
        hiddenSize: cfg.hiddenSize,
        intermediateSize: cfg.ffnSize,
        numLayers: cfg.layers,
        numHeads: cfg.heads,
        numKvHeads: cfg.kvHeads,
        rmsNormEps: 1e-5,
        ropeTheta: 10000,
        tieWordEmbeddings: true,
        maxPositionEmbeddings: 256,
      },
    }),
  );

  // 3. SFT with LoRA on the chosen dialogues; the adapter merged into the base.
  const sftDir = join(out, 'sft');
  claimRunFolder(sftDir, 'sft'); // before its stage marker goes in: the folder is an sft run's
  await stage('sft', join(sftDir, 'stage'), inputs.sft, async () => {
    const r = await runSft({
      ...sftDefaults(),
      model: baseDir,
      data: files.sft,
      out: sftDir,
      seed: cfg.worldSeed,
      backend: cfg.backend as ReturnType<typeof sftDefaults>['backend'],
      resume: true,
      loraR: cfg.loraR,
      loraAlpha: cfg.loraAlpha,
      loraDropout: 0,
      maxLength: 256,
      heldOutFraction: 0.05,
      maxEvalExamples: 128,
      lr: cfg.sftLr,
      warmupSteps: Math.min(10, Math.floor(cfg.sftSteps / 10)),
      microBatchSize: cfg.sftBatch,
      maxSteps: cfg.sftSteps,
      evalEvery: 0,
      checkpointEvery: 20,
      samples: 2,
      sampleMaxTokens: cfg.maxNewTokens,
    });
    return { evalLossBefore: r.evalLossBefore, evalLossAfter: r.evalLossAfter, steps: r.steps, merged: r.mergedDir };
  });
  const policyDir = join(sftDir, 'merged');

  // 4. QRM: features from the frozen base model, quantile heads, gate.
  const qrmDir = join(out, 'qrm');
  const qrmModelDir = join(qrmDir, 'model');
  await stage('qrm', join(qrmDir, 'stage'), inputs.qrm, async () => {
    const backbone = await loadModel(baseDir);
    const f1 = join(qrmDir, 'features-ratings.safetensors');
    const f2 = join(qrmDir, 'features-pairs.safetensors');
    // Mean pooling of the response (not SPEC's last token): the tiny backbone's last state mostly
    // predicts the next token; the mean keeps which moves the response made (README, Figure 3).
    const feat = { backbone, backboneRef: baseDir, batchSize: 32, pooling: cfg.pooling };
    await extractRatingFeatures({ input: files.ratings, output: f1, ...feat });
    await extractPairFeatures({ input: files.pairs, output: f2, ...feat });
    const r = readRatingFeatures(f1);
    // The world's ratings already lie in [0, 1] (SPEC §4): no rescaling, so the QRM's quantiles
    // are on the truth's scale.
    const heads = await fitQuantileHeads(r.embeddings, r.n, r.d, r.labels, {
      attributes: r.attributes,
      K: cfg.quantiles,
      alpha: cfg.l1,
      labelScale: 'none',
      rng: new Rng(cfg.worldSeed),
      // The first-order phase alone reaches the LP optimum to ~1e-4 relative on problems of this
      // size (packages/qrm/test/heads.test.ts); the exact LP finish would cost minutes here.
      lpMaxCells: 0,
    });
    const trained = await trainQrm({
      heads,
      pairs: readPairFeatures(f2),
      hiddenSize: cfg.gateHidden,
      epochs: cfg.gateEpochs,
      batchSize: cfg.gateBatch,
      seed: cfg.worldSeed,
      backbone: baseDir,
      pooling: cfg.pooling,
    });
    await trained.model.save(qrmModelDir);
    backbone.model.dispose();
    trained.model.dispose();
    return {
      ratings: r.n,
      attributes: r.attributes,
      debiasPenalties: trained.debias.penalties,
      gate: { nTrain: trained.nTrain, nVal: trained.nVal, ...trained.training },
    };
  });

  // 5. RLOO: each utility, each seed.
  const qrm = new NormalisedQrm(await QuantileRewardModel.load(qrmModelDir));
  const summaries: Record<string, RunSummary> = {};
  for (const run of RUNS) {
    const perSeed: RunSummary['seeds'] = [];
    for (const seed of cfg.seeds) {
      const runDir = join(out, 'rl', `${run.name}-seed${seed}`);
      claimRunFolder(runDir, 'rloo'); // before its stage markers go in: the folder is an rloo run's
      await stage(`rloo ${run.name} seed ${seed}`, join(runDir, 'stage'), { ...inputs.rl, seed, utility: run.utility }, () =>
        runRlStage({ cfg, world, qrm, policyDir, prompts: files.prompts, out: runDir, seed, utility: run.utility }),
      );
      const ev = await stage(`final evaluation ${run.name} seed ${seed}`, join(runDir, 'eval'), { ...inputs.rl, seed, utility: run.utility }, () =>
        evaluatePolicy({ cfg, world, qrm, policyDir, adapterDir: join(runDir, 'adapter'), prompts: files.evalPrompts, seed }),
      );
      perSeed.push({ seed, ...ev });
    }
    summaries[run.name] = {
      final: { estimated: meanOver(perSeed.map((s) => s.estimated)), true: meanOver(perSeed.map((s) => s.true)) },
      qrm_mae: meanOver(perSeed.map((s) => s.qrm_mae)),
      seeds: perSeed,
    };
  }
  qrm.dispose();

  // 6. The figure and the summary.
  const svg = figure3Svg(
    RUNS.map((run) => ({
      label: run.name,
      seeds: cfg.seeds.map((seed) => readMetricsFile(join(out, 'rl', `${run.name}-seed${seed}`, 'metrics.jsonl'))),
    })),
    { title: 'QRM quantile estimates of the sampled responses during RLOO', smooth: 5 },
  );
  writeFileAtomic(join(out, 'figure3.svg'), svg);
  writeFileAtomic(join(out, 'figure3.png'), await svgToPng(svg));
  const trueSvg = figure3Svg(
    RUNS.map((run) => ({
      label: run.name,
      seeds: cfg.seeds.map((seed) => readMetricsFile(join(out, 'rl', `${run.name}-seed${seed}`, 'metrics.jsonl'))),
    })),
    { title: 'True quantiles of the sampled responses during RLOO', smooth: 5, keys: SUMMARY_KEYS.map((k) => `true/${k}`), panelTitle: (k) => `true ${k.slice(5)}` },
  );
  writeFileAtomic(join(out, 'figure3-true.svg'), trueSvg);
  writeFileAtomic(join(out, 'figure3-true.png'), await svgToPng(trueSvg));
  const minutes = Object.values(stageSeconds).reduce((a, x) => a + x, 0) / 60;
  const note =
    `Seed means over seeds ${cfg.seeds.join(', ')} of the final policies evaluated on ${cfg.evalPrompts} held-out prompts ` +
    `(one response each, temperature ${cfg.temperature}); "QRM estimate" is the quantile reward model's mixed quantile ` +
    `(eq. 3 with mean-pooled features; gate weights normalised over the attributes kept by debiasing), ` +
    `"true" the world's exact quantile of the response's reward under the rater population. ` +
    `risk-aware: exponential utility, lambda ${cfg.lambda}. The stages took ${minutes.toFixed(1)} minutes in all ` +
    `(${Object.entries(stageSeconds).map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(', ')}).`;
  writeFileAtomic(join(out, 'summary.json'), JSON.stringify({ runs: summaries, config: cfg, stage_seconds: stageSeconds }, null, 2) + '\n');
  writeFileAtomic(join(out, 'summary.md'), summaryMarkdown(summaries, note));
  log(`wrote ${join(out, 'figure3.png')}, figure3.svg, summary.json, summary.md (stages: ${minutes.toFixed(1)} min; this process: ${((Date.now() - t0) / 60000).toFixed(1)} min)`);
  process.stdout.write(readFileSync(join(out, 'summary.md'), 'utf8'));
}

/** Samples one response per held-out prompt from the final policy and scores it with the QRM and the truth. */
async function evaluatePolicy(o: {
  cfg: Figure3Config;
  world: World;
  qrm: NormalisedQrm;
  policyDir: string;
  adapterDir: string;
  prompts: string;
  seed: number;
}): Promise<Omit<RunSummary['seeds'][number], 'seed'>> {
  const { model, tokenizer } = await loadModel(o.policyDir);
  try {
    loadLoraAdapter(o.adapterDir, model);
    model.mergeLora();
    const prompts = readFileSync(o.prompts, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => (JSON.parse(l) as { prompt: string }).prompt);
    const rng = new Rng(`eval-${o.seed}`);
    const responses: string[] = [];
    const batch = 32;
    for (let i = 0; i < prompts.length; i += batch) {
      const chunk = prompts.slice(i, i + batch);
      const res = await generate(
        model,
        chunk.map((p) => [tokenizer.bosId, ...tokenizer.encode(p)]),
        { maxNewTokens: o.cfg.maxNewTokens, temperature: o.cfg.temperature, rng, eosTokenId: tokenizer.eosId },
      );
      // As RLOO decodes its rollouts: special tokens (EOS, a stray pad) are not text.
      for (const t of res.tokens) responses.push(tokenizer.decode(t, { skipSpecial: true }));
    }
    const items = prompts.map((prompt, i) => ({ prompt, response: responses[i]! }));
    const est = await o.qrm.quantiles(items);
    const taus = o.qrm.taus;
    const truth = items.map((it) => o.world.trueQuantiles(it.prompt, it.response, taus).reward);
    const trueE = items.map((it) => o.world.trueExpectation(it.prompt, it.response));
    const moves: Record<string, number> = {};
    for (const it of items) {
      for (const m of new Set(parseResponse(it.response).map((p) => p.id))) moves[m] = (moves[m] ?? 0) + 1 / items.length;
    }
    return {
      estimated: meanQuantiles(est, taus),
      true: meanQuantiles(truth, taus, trueE),
      qrm_mae: meanAbsError(est, truth, taus, trueE),
      moves,
    };
  } finally {
    model.dispose();
  }
}

main().catch((e: unknown) => {
  if (e instanceof QrlhfError) {
    process.stderr.write(`figure3: ${e.message}\n`);
    process.exit(1);
  }
  const err = e instanceof Error ? e : new Error(String(e));
  process.stderr.write(`figure3: internal error: ${err.message}\n`);
  process.stderr.write(process.env['QRLHF_DEBUG'] ? `${err.stack}\n` : '(set QRLHF_DEBUG=1 for the stack trace)\n');
  process.exit(2);
});
void tf;
void writeFileSync;

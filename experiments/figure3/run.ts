/**
 * The paper's Figure 3, end to end, in the synthetic world of @qrlhf/world where every reward
 * distribution is known:
 *
 *   data → base model (pretrained here) → SFT with LoRA (merged) → QRM features (stage 1 ratings,
 *   stage 2 pairs) → quantile heads → gate → RLOO with the expectation and with the exponential
 *   utility, over several seeds → final evaluation (QRM estimate and truth) → figure and summary.
 *
 * Usage: npm run figure3 -- [--config FILE] [--out DIR] [--<block>.<key> VALUE ...] (--help lists
 * every key; the config file defaults to configs/figure3.json). Each stage block of the config is
 * that stage's own config (config.ts), handed to its run function with the paths the pipeline
 * fills in. Every stage keeps its outputs under the run folder and marks itself done (`.done`); a
 * rerun skips finished stages, and an interrupted SFT or RLOO run resumes from its last checkpoint.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  QrlhfError,
  claimRunFolder,
  Rng,
  generate,
  initBackend,
  loadLoraAdapter,
  loadModel,
  repoRoot,
  writeFileAtomic,
} from '@qrlhf/core';
import { runProgram } from '@qrlhf/cli';
import { createWorld, writeWorldData, parseResponse, type World, type WorldFiles } from '@qrlhf/world';
import { runSft } from '@qrlhf/sft';
import { QuantileRewardModel, runQrmFeatures, runQrmFit, runQrmGate } from '@qrlhf/qrm';
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

/** A config block as dotted keys ({"rloo.lambda": 5, ...}): stage markers compare and name them one by one. */
function flatten(o: object, prefix: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flatten(v as object, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = v;
  }
  return out;
}

/** The settings each stage depends on: its own block and those of the stages before it. */
function stageInputs(cfg: Figure3Config) {
  const pick = (...blocks: ('world' | 'pretrain' | 'sft' | 'qrm' | 'rloo')[]) => Object.assign({}, ...blocks.map((b) => flatten(cfg[b], `${b}.`))) as Record<string, unknown>;
  return {
    data: pick('world'),
    pretrain: pick('world', 'pretrain'),
    sft: pick('world', 'pretrain', 'sft'),
    qrm: pick('world', 'pretrain', 'qrm'),
    rl: pick('world', 'pretrain', 'sft', 'qrm', 'rloo'),
  };
}

/** The whole experiment, from its resolved config (see config.ts). */
async function runFigure3(cfg: Figure3Config): Promise<void> {
  const out = resolve(cfg.out);
  mkdirSync(out, { recursive: true });
  writeFileAtomic(join(out, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  await initBackend(cfg.backend);
  const t0 = Date.now();
  const world = createWorld(cfg.world.seed);

  // 1. The world's datasets.
  const dataDir = join(out, 'data');
  const inputs = stageInputs(cfg);
  const files = await stage('data', dataDir, inputs.data, async () => writeWorldData(world, dataDir, cfg.world)) as WorldFiles;

  // 2. A tiny base model, pretrained on the world's dialogues.
  const baseDir = join(out, 'base');
  await stage('pretrain', join(out, 'pretrain'), inputs.pretrain, async () =>
    pretrainBase(cfg.pretrain, { corpus: files.pretrain, tokenizer: files.tokenizer, out: baseDir }),
  );

  // 3. SFT with LoRA on the chosen dialogues; the adapter merged into the base.
  const sftDir = join(out, 'sft');
  claimRunFolder(sftDir, 'sft'); // before its stage marker goes in: the folder is an sft run's
  await stage('sft', join(sftDir, 'stage'), inputs.sft, async () => {
    const r = await runSft({ ...cfg.sft, model: baseDir, tokenizer: null, data: files.sft, out: sftDir, resume: true, backend: cfg.backend });
    return { evalLossBefore: r.evalLossBefore, evalLossAfter: r.evalLossAfter, steps: r.steps, merged: r.mergedDir };
  });
  const policyDir = join(sftDir, 'merged');

  // 4. QRM: features from the frozen base model, quantile heads, gate.
  const qrmDir = join(out, 'qrm');
  const qrmModelDir = join(qrmDir, 'model');
  await stage('qrm', join(qrmDir, 'stage'), inputs.qrm, async () => {
    const f1 = join(qrmDir, 'features-ratings.safetensors');
    const f2 = join(qrmDir, 'features-pairs.safetensors');
    const headsDir = join(qrmDir, 'heads');
    // The features block (the config has mean pooling, not SPEC's last token: the tiny backbone's
    // last state mostly predicts the next token; the mean keeps which moves the response made).
    const feat = { ...cfg.qrm.features, model: baseDir, tokenizer: null, engine: 'local' as const, baseUrl: [], engineModel: null, backend: cfg.backend };
    const r = await runQrmFeatures({ ...feat, ratings: files.ratings, pairs: null, out: f1 });
    await runQrmFeatures({ ...feat, ratings: null, pairs: files.pairs, out: f2 });
    // The world's ratings already lie in [0, 1] (SPEC §4): the fit block has labelScale 'none', so the
    // QRM's quantiles are on the truth's scale; and lpMaxCells 0: the first-order phase alone reaches
    // the LP optimum to ~1e-4 relative at this size (qrm/test/heads.test.ts), the exact LP would cost minutes.
    await runQrmFit({ ...cfg.qrm.fit, features: f1, out: headsDir }, { quiet: true });
    const trained = await runQrmGate({
      ...cfg.qrm.gate, heads: headsDir, pairs: f2, reference: null, out: qrmModelDir, backbone: baseDir, tokenizer: null,
      pooling: cfg.qrm.features.pooling, metrics: null, backend: cfg.backend,
    });
    return {
      ratings: r.n,
      attributes: r.attributes,
      debiasPenalties: trained.debias.penalties,
      gate: { nTrain: trained.nTrain, nVal: trained.nVal, ...trained.training },
    };
  });

  // 5. RLOO: each utility, each seed.
  const qrm = new NormalisedQrm(await QuantileRewardModel.load(qrmModelDir), cfg.rloo.rewardBatchSize);
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
    `Seed means over seeds ${cfg.seeds.join(', ')} of the final policies evaluated on ${cfg.world.evalPrompts} held-out prompts ` +
    `(one response each, temperature ${cfg.rloo.temperature}); "QRM estimate" is the quantile reward model's mixed quantile ` +
    `(eq. 3 with mean-pooled features; gate weights normalised over the attributes kept by debiasing), ` +
    `"true" the world's exact quantile of the response's reward under the rater population. ` +
    `risk-aware: exponential utility, lambda ${cfg.rloo.lambda}. The stages took ${minutes.toFixed(1)} minutes in all ` +
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
    // sampled as RLOO samples: its decoding batch, response length and temperature
    const { generationBatchSize: batch, maxNewTokens, temperature } = o.cfg.rloo;
    for (let i = 0; i < prompts.length; i += batch) {
      const chunk = prompts.slice(i, i + batch);
      const res = await generate(
        model,
        chunk.map((p) => [tokenizer.bosId, ...tokenizer.encode(p)]),
        { maxNewTokens, temperature, rng, eosTokenId: tokenizer.eosId },
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

await runProgram({
  command: 'figure3',
  describe: "The paper's Figure 3 end to end in the synthetic world: data, base model, SFT, QRM, RLOO (risk-neutral and risk-aware, each seed), evaluation, figure and summary",
  schema: FIGURE3_SCHEMA,
  defaultConfigFile: join(repoRoot(), 'configs', 'figure3.json'),
  run: runFigure3,
  examples: [
    ['$0 --config configs/figure3-smoke.json --out runs/f3-smoke', 'the whole pipeline at toy size (about a minute)'],
    ['$0 --rloo.lambda 3 --out runs/f3-lambda3', 'another risk aversion; every other key as in configs/figure3.json'],
  ],
});

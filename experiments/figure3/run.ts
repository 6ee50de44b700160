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
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { QrlhfError, claimRunFolder, Rng, defaultConfig, initBackend, loadModel, repoRoot, writeFileAtomic } from '@qrlhf/core';
import { runProgram } from '@qrlhf/cli';
import { createWorld, writeWorldData, type WorldFiles } from '@qrlhf/world';
import { runSft } from '@qrlhf/sft';
import { FEATURE_ENGINE_SCHEMA, QuantileRewardModel, type FeaturePooling, type QrmNormalise, runQrmFeatures, runQrmFit, runQrmGate } from '@qrlhf/qrm';
import { RLOO_SCHEMA, figure3Svg, readMetricsFile, svgToPng } from '@qrlhf/rloo';
import { FIGURE3_SCHEMA, type Figure3Config } from './config.js';
import { pretrainBase } from './pretrain.js';
import { ratePolicySamples } from './policy-ratings.js';
import { trainRewardBackbone } from './reward-backbone.js';
import {
  checkClaims, meanOver, promptValues, summaryIntervals, summaryMarkdown, SUMMARY_KEYS, UPPER_KEYS, tauKey,
  type EvalMeans, type PromptValues, type RunSummary,
} from './summary.js';
import { NormalisedQrm, RUNS } from './rl.js';
import { log, stage, stageInputs, stageSeconds } from './stage.js';
import { paths, readEvalRecords, runJobs, type EvalResult, type Job } from './jobs.js';
import { readPrompts, sampleResponses } from './sample.js';
import { ceQ25Lambda, meanBudgetLambda, type MeanBudgetPoint } from './lambda.js';
import { BOOTSTRAP_DEFAULTS } from './stats.js';

/** The whole experiment, from its resolved config (see config.ts). */
async function runFigure3(cfg: Figure3Config): Promise<void> {
  const out = resolve(cfg.out);
  mkdirSync(out, { recursive: true });
  if (cfg.seeds.length === 0) throw new QrlhfError('figure3: seeds is empty (expected at least one RLOO seed)');
  if (cfg.lambdaRule !== 'fixed' && cfg.rloo.lambda !== RLOO_SCHEMA.lambda.default) {
    throw new QrlhfError(`figure3: rloo.lambda ${cfg.rloo.lambda} would not be used: lambdaRule '${cfg.lambdaRule}' chooses the risk-aware run's lambda (add --lambda-rule fixed to train at ${cfg.rloo.lambda})`);
  }
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
    pretrainBase(cfg.pretrain, { corpus: files.pretrain, tokenizer: files.tokenizer, out: baseDir, run: join(out, 'pretrain') }),
  );

  // 3. SFT with LoRA on the chosen dialogues; the adapter merged into the base.
  const sftDir = join(out, 'sft');
  claimRunFolder(sftDir, 'sft'); // before its stage marker goes in: the folder is an sft run's
  await stage('sft', join(sftDir, 'stage'), inputs.sft, async () => {
    const r = await runSft({ ...cfg.sft, model: baseDir, tokenizer: null, data: files.sft, out: sftDir, resume: true, backend: cfg.backend });
    return { evalLossBefore: r.evalLossBefore, evalLossAfter: r.evalLossAfter, steps: r.steps, merged: r.mergedDir };
  });
  const policyDir = join(sftDir, 'merged');

  // 4. QRM: (on-policy ratings, a reward backbone,) features from the backbone, quantile heads, gate.
  const qrmDir = join(out, 'qrm');
  const qrmModelDir = join(qrmDir, 'model');
  await stage('qrm', join(qrmDir, 'stage'), inputs.qrm, async () => {
    const f1 = join(qrmDir, 'features-ratings.safetensors');
    const f2 = join(qrmDir, 'features-pairs.safetensors');
    const headsDir = join(qrmDir, 'heads');
    const backboneDir = cfg.rewardBackbone.steps > 0 ? join(qrmDir, 'backbone') : baseDir;
    // On-policy ratings (policy-ratings.ts): the SFT policy's samples, rated, added to the world's.
    let ratings = files.ratings;
    let policyRatings: Awaited<ReturnType<typeof ratePolicySamples>> | null = null;
    if (cfg.policyRatings.responses > 0) {
      const own = join(qrmDir, 'ratings-policy.jsonl');
      policyRatings = await ratePolicySamples(cfg.policyRatings, {
        world, policyDir, prompts: files.prompts, out: own,
        sampling: cfg.rloo,
      });
      ratings = join(qrmDir, 'ratings-all.jsonl');
      writeFileAtomic(ratings, readFileSync(files.ratings, 'utf8') + readFileSync(own, 'utf8'));
      log(`qrm: ${policyRatings.rows} on-policy rating rows (${policyRatings.responses} SFT samples, ${(100 * policyRatings.garbledShare).toFixed(0)} % with a garbled sentence)`);
    }
    // The reward backbone (reward-backbone.ts): the base fine-tuned on those ratings, read instead of the base.
    let rewardBackbone: Awaited<ReturnType<typeof trainRewardBackbone>> | null = null;
    if (cfg.rewardBackbone.steps > 0) {
      rewardBackbone = await trainRewardBackbone(cfg.rewardBackbone, {
        base: baseDir, ratings, attributes: world.attributes, pooling: cfg.qrm.features.pooling as FeaturePooling, out: backboneDir,
      });
      log(`qrm: reward backbone trained on ${rewardBackbone.rows} rating rows (mse ${rewardBackbone.loss.toFixed(4)}; constant predictor ${rewardBackbone.baselineLoss.toFixed(4)})`);
    }
    // The features block (the default config has max pooling, not SPEC's last token: the tiny
    // backbone's last state mostly predicts the next token; the max keeps which moves the response
    // made, and unlike the mean does not halve each sentence's part in a two-sentence response).
    const feat = { ...cfg.qrm.features, model: backboneDir, tokenizer: null, engine: defaultConfig(FEATURE_ENGINE_SCHEMA), backend: cfg.backend };
    const r = await runQrmFeatures({ ...feat, ratings, pairs: null, out: f1 });
    await runQrmFeatures({ ...feat, ratings: null, pairs: files.pairs, out: f2 });
    // The world's ratings already lie in [0, 1] (SPEC §4): the fit block has labelScale 'none', so the
    // QRM's quantiles are on the truth's scale; and lpMaxCells 0: the first-order phase alone reaches
    // the LP optimum to ~1e-4 relative at this size (qrm/test/heads.test.ts), the exact LP would cost minutes.
    await runQrmFit({ ...cfg.qrm.fit, features: f1, out: headsDir }, { quiet: true });
    const trained = await runQrmGate({
      ...cfg.qrm.gate, heads: headsDir, pairs: f2, reference: null, out: qrmModelDir, backbone: backboneDir, tokenizer: null,
      pooling: null, metrics: null, backend: cfg.backend, // pooling: read from the features' record
    });
    return {
      ratings: r.n,
      policyRatings,
      rewardBackbone,
      attributes: r.attributes,
      debiasPenalties: trained.debias.penalties,
      gate: { nTrain: trained.nTrain, nVal: trained.nVal, ...trained.training },
    };
  });

  // 5. lambda of the risk-aware run, by the configured rule (never from the truth).
  const lambda = await stage('lambda', join(out, 'lambda'), { ...inputs.sftEval, lambdaRule: cfg.lambdaRule, ...(cfg.lambdaRule === 'fixed' ? { 'rloo.lambda': cfg.rloo.lambda } : { lambdaPrompts: cfg.lambdaPrompts }), ...(cfg.lambdaRule === 'mean-budget' ? { lambdaSamples: cfg.lambdaSamples, lambdaBudget: cfg.lambdaBudget, 'rloo.qrmNormalise': cfg.rloo.qrmNormalise } : {}) }, () =>
    chooseLambda(cfg, out, files),
  );
  const rlCfg: Figure3Config = { ...cfg, rloo: { ...cfg.rloo, lambda: lambda.lambda } };
  // the run folder's config.json holds every value used: the rule's lambda included
  writeFileAtomic(join(out, 'config.json'), JSON.stringify(rlCfg, null, 2) + '\n');

  // 6. RLOO: each utility, each seed, with its final evaluation; and the SFT policy's evaluation per
  // seed. The longest jobs first; `parallel` of them side by side (jobs.ts).
  const jobs: Job[] = [
    ...cfg.seeds.flatMap((seed) => RUNS.map((r): Job => ({ kind: 'rl', run: r.name, seed }))),
    ...cfg.seeds.map((seed): Job => ({ kind: 'start', seed })),
  ];
  const tJobs = Date.now();
  await runJobs(rlCfg, out, jobs, cfg.parallel);
  const jobsMinutes = (Date.now() - tJobs) / 60000;
  log(`RL jobs: ${jobs.length} done in ${(jobsMinutes * 60).toFixed(1)} s of wall time, ${cfg.parallel} at a time`);

  // 7. The summary: means, the SFT values, bootstrap intervals, the claims.
  const p = paths(out);
  const marker = <T,>(dir: string) => (JSON.parse(readFileSync(join(dir, '.done'), 'utf8')) as { result: T }).result;
  const qrmModel = await QuantileRewardModel.load(p.qrmModel);
  const taus = qrmModel.taus;
  const keys = [...SUMMARY_KEYS, ...UPPER_KEYS.filter((k) => Array.from(taus).some((t) => tauKey(t) === k))];
  const startEvals = cfg.seeds.map((seed) => marker<EvalResult>(p.start(seed)));
  const startValues = cfg.seeds.map((seed) => promptValues(readEvalRecords(p.start(seed)), taus, keys));
  const finalValues: Record<string, PromptValues[]> = {};
  const finalEvals: Record<string, EvalResult[]> = {};
  for (const run of RUNS) {
    finalEvals[run.name] = cfg.seeds.map((seed) => marker<EvalResult>(join(p.rl(run.name, seed), 'eval')));
    finalValues[run.name] = cfg.seeds.map((seed) => promptValues(readEvalRecords(join(p.rl(run.name, seed), 'eval')), taus, keys));
  }
  const boot = { ...BOOTSTRAP_DEFAULTS, resamples: cfg.bootstrapResamples };
  const iv = summaryIntervals(finalValues, startValues, ['risk-aware', 'risk-neutral'], keys, boot);
  const means = (e: EvalResult): EvalMeans => ({ estimated: e.estimated, true: e.true, qrm_mae: e.qrm_mae, moves: e.moves });
  const summaries: Record<string, RunSummary> = {};
  for (const run of RUNS) {
    const ev = finalEvals[run.name]!;
    summaries[run.name] = {
      final: { estimated: meanOver(ev.map((s) => s.estimated)), true: meanOver(ev.map((s) => s.true)) },
      start: { estimated: meanOver(startEvals.map((s) => s.estimated)), true: meanOver(startEvals.map((s) => s.true)) },
      qrm_mae: meanOver(ev.map((s) => s.qrm_mae)),
      qrm_mae_start: meanOver(startEvals.map((s) => s.qrm_mae)),
      seeds: cfg.seeds.map((seed, i) => ({ seed, ...means(ev[i]!), start: means(startEvals[i]!) })),
      ci: { final: iv.final[run.name]!, gain: iv.gain[run.name]! },
    };
  }
  const claims = checkClaims(summaries, iv.gain, iv.difference, boot.level);
  const meanGate = (es: EvalResult[]) => {
    const g: Record<string, number> = {};
    for (const a of qrmModel.attributes) g[a] = es.reduce((acc, e) => acc + (e.gate?.[a] ?? NaN), 0) / es.length;
    return g;
  };
  const allFinal = Object.values(finalEvals).flat();
  const gateFinal = meanGate(allFinal);
  const qrmInfo = {
    attributes: qrmModel.attributes,
    debiasPenalties: qrmModel.debiasPenalties,
    // the gate's weights sum to beta (the Bradley-Terry scale): their mean sum over the final evaluations
    beta: Object.values(gateFinal).reduce((a, b) => a + b, 0),
    gateWeights: { start: meanGate(startEvals), final: gateFinal },
    mae: { start: meanOver(startEvals.map((s) => s.qrm_mae)), final: meanOver(allFinal.map((s) => s.qrm_mae)) },
  };
  qrmModel.dispose();

  // 8. The figures.
  const series = RUNS.map((run) => ({ label: run.name, seeds: cfg.seeds.map((seed) => readMetricsFile(join(p.rl(run.name, seed), 'metrics.jsonl'))) }));
  // bands: from the lowest to the highest seed's curve (each smoothed over 5 steps), every seed shown
  const svg = figure3Svg(series, { title: 'QRM quantile estimates of the sampled responses during RLOO', smooth: 5, band: 'min-max' });
  writeFileAtomic(join(out, 'figure3.svg'), svg);
  writeFileAtomic(join(out, 'figure3.png'), await svgToPng(svg));
  const trueSvg = figure3Svg(series, { title: 'True quantiles of the sampled responses during RLOO', smooth: 5, band: 'min-max', keys: SUMMARY_KEYS.map((k) => `truth/${k}`) });
  writeFileAtomic(join(out, 'figure3-true.svg'), trueSvg);
  writeFileAtomic(join(out, 'figure3-true.png'), await svgToPng(trueSvg));
  const minutes = Object.values(stageSeconds).reduce((a, x) => a + x, 0) / 60;
  const note =
    `Seed means over seeds ${cfg.seeds.join(', ')} of the final policies, and of the SFT policy (step 0), evaluated on ${cfg.world.evalPrompts} evaluation prompts ` +
    `disjoint from the RL prompts (one response each, temperature ${cfg.rloo.temperature}, the same rng stream per seed for the SFT and both final policies); ` +
    `"QRM estimate" is the quantile reward model's mixed quantile (eq. 3 with ${cfg.qrm.features.pooling}-pooled features of ${cfg.rewardBackbone.steps > 0 ? 'the reward backbone' : 'the frozen base model'}; ` +
    `${cfg.rloo.qrmNormalise === 'kept-weight' ? 'gate weights normalised over the attributes kept by debiasing' : cfg.rloo.qrmNormalise === 'none' ? 'no normalisation of the gate weights' : "the QRM's own normalisation"}), ` +
    (cfg.rewardSource === 'truth' ? "DIAGNOSTIC: RLOO was trained on the world's exact quantiles, not on the QRM; " : '') +
    `"true" the world's exact quantile of the response's reward under the rater population. ` +
    `Intervals: ${Math.round(boot.level * 100)} % two-level percentile bootstrap (${boot.resamples} resamples: seeds with replacement, then the evaluation prompts within each seed; ` +
    `differences paired by seed and prompt). The figures' bands run from the lowest to the highest seed's curve (each smoothed over 5 steps). ` +
    `risk-aware: exponential utility, lambda ${lambda.lambda.toFixed(3)} (rule ${cfg.lambdaRule}). The stages took ${minutes.toFixed(1)} minutes of work in all ` +
    `(${Object.entries(stageSeconds).map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(', ')}); the RL jobs ${jobsMinutes.toFixed(1)} min of wall time, ${cfg.parallel} at a time.`;
  writeFileAtomic(
    join(out, 'summary.json'),
    JSON.stringify(
      { runs: summaries, difference: iv.difference, claims, lambda: { rule: cfg.lambdaRule, ...lambda }, qrm: qrmInfo, bootstrap: { ...boot, unit: 'seeds, then evaluation prompts within each seed; paired by seed and prompt' }, config: rlCfg, stage_seconds: stageSeconds },
      null,
      2,
    ) + '\n',
  );
  writeFileAtomic(join(out, 'summary.md'), summaryMarkdown(summaries, iv.difference, claims, note));
  log(`wrote ${join(out, 'figure3.png')}, figure3.svg, summary.json, summary.md (stages: ${minutes.toFixed(1)} min; this process: ${((Date.now() - t0) / 60000).toFixed(1)} min)`);
  process.stdout.write(readFileSync(join(out, 'summary.md'), 'utf8'));
}

/** The risk-aware run's lambda by cfg.lambdaRule (lambda.ts): 'fixed', or a rule on the QRM's estimates of SFT responses to RL prompts. */
async function chooseLambda(cfg: Figure3Config, out: string, files: WorldFiles): Promise<{ lambda: number; target?: number; meanEstimate?: number; prompts?: number; samples?: number; budget?: number; curve?: MeanBudgetPoint[] }> {
  if (cfg.lambdaRule === 'fixed') return { lambda: cfg.rloo.lambda };
  const prompts = readPrompts(files.prompts).slice(0, cfg.lambdaPrompts);
  const qrm = new NormalisedQrm(await QuantileRewardModel.load(paths(out).qrmModel), cfg.rloo.rewardBatchSize, cfg.rloo.qrmNormalise as QrmNormalise | null);
  const { model, tokenizer } = await loadModel(paths(out).policy);
  try {
    if (cfg.lambdaRule === 'mean-budget') {
      const n = cfg.lambdaSamples;
      // sample j of every prompt, then the next j: n passes over the prompts with one stream
      const rng = new Rng('lambda-rule');
      const rows: { prompt: string; response: string }[] = [];
      for (let j = 0; j < n; j++) (await sampleResponses(model, tokenizer, prompts, cfg.rloo, rng)).forEach((response, i) => rows.push({ prompt: prompts[i]!, response }));
      const est = await qrm.quantiles(rows);
      const groups = prompts.map((_, i) => Array.from({ length: n }, (_, j) => est[j * prompts.length + i]!));
      const r = meanBudgetLambda(groups, cfg.lambdaBudget);
      const at = r.curve.find((p) => p.lambda === r.lambda)!;
      log(`lambda (rule mean-budget): ${r.lambda.toFixed(3)} (best of ${n} by the utility gives up ${(100 * at.loss).toFixed(2)} % of the estimated mean ${r.meanOfBest.toFixed(4)}, budget ${(100 * r.budget).toFixed(1)} %; ${prompts.length} RL prompts)`);
      return { lambda: r.lambda, budget: r.budget, meanEstimate: r.meanOfBest, curve: r.curve, prompts: prompts.length, samples: n };
    }
    const responses = await sampleResponses(model, tokenizer, prompts, cfg.rloo, new Rng('lambda-rule'));
    const est = await qrm.quantiles(prompts.map((prompt, i) => ({ prompt, response: responses[i]! })));
    const r = ceQ25Lambda(est, qrm.taus);
    log(`lambda (rule ce-q25): ${r.lambda.toFixed(3)} (mean estimate ${r.meanEstimate.toFixed(4)}, mean estimated q0.25 ${r.target.toFixed(4)}, ${prompts.length} RL prompts)`);
    return { ...r, prompts: prompts.length };
  } finally {
    model.dispose();
    qrm.dispose();
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
    ['$0 --lambda-rule fixed --rloo.lambda 3 --out runs/f3-lambda3', 'a fixed risk aversion instead of the rule; every other key as in configs/figure3.json'],
  ],
});

/**
 * Where one RLOO step of the Figure 3 experiment spends its time: N steps of RlooLearner at the
 * `rloo` block of a figure3 config (default configs/figure3.json: 16 prompts x k 2, 48 new tokens,
 * temperature 1, LoRA r 8) on a figure3 run folder's SFT policy and QRM, each phase timed by
 * wrapping the calls the learner makes (nothing in the learner changes):
 *
 *   prefill       model.step() on the prompts (generate's first call)
 *   decode        model.decode(), one call per new token
 *   sampling      the rest of the rollout: reading logits, drawing tokens, JS bookkeeping
 *   qrm backbone  the reward's backbone forward (features), i.e. the reward less its heads
 *   qrm heads     QuantileRewardModel.scoreFeatures (heads, gate, mixing)
 *   logprobs      collect() less rollout and reward: policy and reference log-probs, KL, advantages
 *   backward      RlooLearner.gradients (the loss's forward and backward)
 *   optimiser     update() less gradients: clipping, AdamW
 *   rest          step() less collect() and update(): metrics
 *
 * Each thread count runs in a fresh process (QRLHF_WASM_THREADS); the first step (weights
 * fused, XNNPACK operators built) is a warm-up and not counted. The sampled tokens and the
 * metrics are hashed so that two versions of the code can be checked to draw the same tokens.
 *
 * Usage: npm run bench:rloo-step -- [--run runs/figure3-smoke] [--config configs/figure3.json]
 *        [--steps 4] [--threads 1,2,1x2]   (1x2: two one-thread processes at once)
 * The run folder comes from `npm run figure3 -- --config configs/figure3-smoke.json` (same
 * model sizes as the full config; about a minute).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { AdamW, Rng, dialogueFormatFor, initBackend, loadModel, wasmInfo } from '@qrlhf/core';
import { QuantileRewardModel, makeUtility } from '@qrlhf/qrm';
import { RlooLearner, loraConfigOf, preparePrompts, qrmRewardSource, readPromptTexts, rlooDefaults, type RlooConfig } from '@qrlhf/rloo';

function flag(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}
const runDir = flag('run', 'runs/figure3-smoke');
const configPath = flag('config', 'configs/figure3.json');
const steps = Number(flag('steps', '4'));

const PHASES = ['prefill', 'decode', 'sampling', 'qrm backbone', 'qrm heads', 'logprobs', 'backward', 'optimiser', 'rest'] as const;
type Phase = (typeof PHASES)[number];

/** Child: `steps` + 1 steps in this process, one JSON line of mean ms per phase over the counted ones. */
async function child(): Promise<void> {
  const file = JSON.parse(readFileSync(configPath, 'utf8')) as { rloo?: Partial<RlooConfig>; seeds?: number[] };
  const cfg: RlooConfig = { ...rlooDefaults(), ...file.rloo, seed: file.seeds?.[0] ?? 1 };
  await initBackend('auto', { quiet: true });
  const { model, tokenizer } = await loadModel(join(runDir, 'sft', 'merged'));
  const texts = await readPromptTexts(join(runDir, 'data', 'prompts.jsonl'));
  const pset = preparePrompts(texts, tokenizer, { maxPromptLength: cfg.maxPromptLength, maxNewTokens: cfg.maxNewTokens, contextLength: model.config.maxPositionEmbeddings },
    dialogueFormatFor(cfg.chatTemplate, tokenizer));
  const qrm = await QuantileRewardModel.load(join(runDir, 'qrm', 'model'));
  qrm.normalise = 'kept-weight';
  const reward = qrmRewardSource(qrm, { batchSize: cfg.rewardBatchSize });
  const rng = new Rng(`${cfg.seed}:rloo`);
  const adapter = model.addLora(loraConfigOf(cfg), rng);
  const opt = new AdamW(adapter.variables, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  const learner = new RlooLearner({ model, tokenizer, reward, utility: await makeUtility({ name: 'expectation', lambda: cfg.lambda, alpha: cfg.alpha }), settings: cfg, rng, optimizer: opt });

  const ms: Record<Phase, number> = Object.fromEntries(PHASES.map((p) => [p, 0])) as Record<Phase, number>;
  let counting = false;
  const timed = <A extends unknown[], R>(f: (...a: A) => R, add: (dt: number) => void) => (...a: A): R => {
    const t0 = performance.now();
    const r = f(...a);
    if (r instanceof Promise) return r.finally(() => counting && add(performance.now() - t0)) as R;
    if (counting) add(performance.now() - t0);
    return r;
  };
  let inner = 0; // time of wrapped calls inside the current outer phase
  const add = (p: Phase) => (dt: number) => {
    ms[p] += dt;
    inner += dt;
  };
  model.step = timed(model.step.bind(model), add('prefill'));
  model.decode = timed(model.decode.bind(model), add('decode'));
  qrm.scoreFeatures = timed(qrm.scoreFeatures.bind(qrm), add('qrm heads'));
  const span = async <R>(f: () => Promise<R>, rest: Phase): Promise<{ r: R; dt: number }> => {
    const before = inner;
    const t0 = performance.now();
    const r = await f();
    const dt = performance.now() - t0;
    if (counting) {
      ms[rest] += dt - (inner - before);
      inner = before + dt;
    }
    return { r, dt };
  };
  const engine = learner.engine;
  const gen = engine.generate.bind(engine);
  (engine as { generate: typeof gen }).generate = (...a) => span(() => gen(...a), 'sampling').then((x) => x.r);
  const quant = reward.quantiles.bind(reward);
  reward.quantiles = (items) => span(() => quant(items), 'qrm backbone').then((x) => x.r);
  const grads = learner.gradients.bind(learner);
  learner.gradients = (...a) => span(() => grads(...a), 'backward').then((x) => x.r);
  const upd = learner.update.bind(learner);
  learner.update = (...a) => span(() => upd(...a), 'optimiser').then((x) => x.r);
  const coll = learner.collect.bind(learner);
  learner.collect = (...a) => span(() => coll(...a), 'logprobs').then((x) => x.r);

  const hash = createHash('sha256');
  let total = 0;
  let tokens = 0;
  for (let s = 0; s <= steps; s++) {
    counting = s > 0;
    const idx = Array.from({ length: cfg.batchSize }, (_, i) => (s * cfg.batchSize + i) % pset.prompts.length);
    const { r, dt } = await span(() => learner.step(idx.map((i) => pset.prompts[i]!), cfg.lr), 'rest');
    hash.update(JSON.stringify(r.batch.responses));
    hash.update(JSON.stringify(r.metrics));
    if (counting) {
      total += dt;
      tokens += r.batch.responses.reduce((a, x) => a + x.length, 0);
    }
  }
  const mean = Object.fromEntries(PHASES.map((p) => [p, ms[p] / steps]));
  console.log(JSON.stringify({ threads: wasmInfo().threads, backend: tf.getBackend(), ms: mean, step: total / steps, tokens: tokens / steps, hash: hash.digest('hex').slice(0, 16) }));
  opt.dispose();
  model.dispose();
  qrm.dispose();
}

if (process.argv.includes('--child')) {
  await child();
  process.exit(0); // the wasm thread pool keeps the process alive (PERF-NOTES)
} else {
  if (!existsSync(join(runDir, 'sft', 'merged'))) {
    console.error(`bench-rloo-step: ${runDir}/sft/merged not found; make the run folder first: npm run figure3 -- --config configs/figure3-smoke.json`);
    process.exit(1);
  }
  // `--threads 1,2,1x2`: n threads in one process; 1x2: two one-thread processes at once (as
  // figure3's side-by-side RL workers run), the first one's figures shown.
  const threads = flag('threads', '1,2').split(',');
  const self = fileURLToPath(import.meta.url);
  type Row = { threads: number; backend: string; ms: Record<Phase, number>; step: number; tokens: number; hash: string; label: string };
  const runChild = (n: string) =>
    new Promise<Row>((res, rej) => {
      execFile(process.execPath, [...process.execArgv, self, '--child', '--run', runDir, '--config', configPath, '--steps', String(steps)], {
        encoding: 'utf8',
        env: { ...process.env, QRLHF_WASM_THREADS: n },
      }, (err, out, errOut) => (err ? rej(new Error(`${err.message}\n${errOut}`)) : res(JSON.parse(out.trim().split('\n').pop()!) as Row)));
    });
  const rows: Row[] = [];
  for (const spec of threads) {
    const [n, copies] = spec.split('x');
    const all = await Promise.all(Array.from({ length: Number(copies ?? 1) }, () => runChild(n!)));
    const r = all[0]!;
    r.label = `${r.backend} ${r.threads} thread${r.threads === 1 ? '' : 's'}${all.length > 1 ? `, ${all.length} processes at once` : ''}`;
    rows.push(r);
  }
  console.log(`policy ${runDir}/sft/merged, rloo block of ${configPath}; mean of ${steps} steps after one warm-up; ms per step`);
  console.log(`| phase | ${rows.map((r) => r.label).join(' | ')} |`);
  console.log(`|---|${rows.map(() => '---:').join('|')}|`);
  for (const p of PHASES) console.log(`| ${p} | ${rows.map((r) => r.ms[p].toFixed(1)).join(' | ')} |`);
  console.log(`| **step** | ${rows.map((r) => `**${r.step.toFixed(0)}**`).join(' | ')} |`);
  console.log(`| new tokens per step | ${rows.map((r) => r.tokens.toFixed(0)).join(' | ')} |`);
  console.log(`| tokens+metrics hash | ${rows.map((r) => r.hash).join(' | ')} |`);
}

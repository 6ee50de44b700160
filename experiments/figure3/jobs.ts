/**
 * Figure 3's independent jobs after the QRM: one RLOO run and its final evaluation per (utility,
 * seed), and one evaluation of the SFT policy per seed (step 0). Each job is a function of the
 * config alone (its own seeds, its own stage markers), so it gives the same numbers whether it runs
 * in the runner's process (`parallel` 1) or in one of `parallel` worker processes (worker.ts) with
 * one wasm thread each: two processes of two threads each would oversubscribe two cores.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QrlhfError, Rng, claimRunFolder, loadLoraAdapter, loadModel, writeFileAtomic } from '@qrlhf/core';
import { QuantileRewardModel, type QrmNormalise } from '@qrlhf/qrm';
import { createWorld, parseResponse, type World } from '@qrlhf/world';
import type { Figure3Config } from './config.js';
import { NormalisedQrm, runRlStage, RUNS, TrueReward } from './rl.js';
import { log, stage, stageInputs, stageSeconds } from './stage.js';
import { meanAbsError, meanQuantiles, type Q } from './summary.js';
import { readPrompts, sampleResponses } from './sample.js';

export type Job = { kind: 'rl'; run: (typeof RUNS)[number]['name']; seed: number } | { kind: 'start'; seed: number };

export function jobName(j: Job): string {
  return j.kind === 'rl' ? `${j.run} seed ${j.seed}` : `SFT evaluation seed ${j.seed}`;
}

/** Where the pipeline's folders are, from the run folder. */
export function paths(out: string) {
  return {
    data: join(out, 'data'),
    base: join(out, 'base'),
    sft: join(out, 'sft'),
    policy: join(out, 'sft', 'merged'),
    qrmModel: join(out, 'qrm', 'model'),
    rl: (run: string, seed: number) => join(out, 'rl', `${run}-seed${seed}`),
    /** The SFT policy's evaluation for one seed: shared by both runs of that seed (same policy, prompts and rng stream). */
    start: (seed: number) => join(out, 'start', `seed${seed}`),
  };
}

/** One evaluated response: the QRM's quantiles and the world's exact ones (all of the QRM's levels), and the exact expectation. */
export interface EvalRecord {
  prompt: string;
  response: string;
  estimated: number[];
  true: number[];
  trueExpectation: number;
}

export interface EvalResult {
  estimated: Q;
  true: Q;
  qrm_mae: Q;
  moves: Record<string, number>;
  /** Mean gate weight per attribute over the evaluated responses (they sum to the gate's beta). */
  gate: Record<string, number>;
}

/** What a job needs, loaded once per process. */
export class JobContext {
  readonly world: World;
  private qrmP: Promise<NormalisedQrm> | null = null;

  constructor(readonly cfg: Figure3Config, readonly out: string) {
    this.world = createWorld(cfg.world.seed);
  }

  qrm(): Promise<NormalisedQrm> {
    this.qrmP ??= QuantileRewardModel.load(paths(this.out).qrmModel).then(
      (m) => new NormalisedQrm(m, this.cfg.rloo.rewardBatchSize, this.cfg.rloo.qrmNormalise as QrmNormalise | null),
    );
    return this.qrmP;
  }

  async dispose(): Promise<void> {
    if (this.qrmP) (await this.qrmP).dispose();
  }
}

/**
 * Samples one response per evaluation prompt from the SFT policy (adapterDir null) or a final
 * policy (its LoRA adapter merged in), with the rng `eval-<seed>`, scores each with the QRM and the
 * truth, writes the records to `dir/responses.jsonl` and returns their means.
 */
export async function evaluatePolicy(ctx: JobContext, o: { adapterDir: string | null; seed: number; dir: string }): Promise<EvalResult> {
  const qrm = await ctx.qrm();
  const { model, tokenizer } = await loadModel(paths(ctx.out).policy);
  try {
    if (o.adapterDir) {
      loadLoraAdapter(o.adapterDir, model);
      model.mergeLora();
    }
    const prompts = readPrompts(join(paths(ctx.out).data, 'eval_prompts.jsonl'));
    const responses = await sampleResponses(model, tokenizer, prompts, ctx.cfg.rloo, new Rng(`eval-${o.seed}`));
    const items = prompts.map((prompt, i) => ({ prompt, response: responses[i]! }));
    // the QRM's scores (normalised as in RL) with their gate weights, recorded beside the quantiles
    const scores = await qrm.qrm.score(items, { batchSize: qrm.batchSize });
    const est = scores.map((x) => x.quantiles);
    const gate: Record<string, number> = {};
    qrm.qrm.attributes.forEach((a, m) => (gate[a] = scores.reduce((acc, x) => acc + x.gate[m]!, 0) / scores.length));
    const taus = qrm.taus;
    const truth = items.map((it) => ctx.world.trueQuantiles(it.prompt, it.response, taus).reward);
    const trueE = items.map((it) => ctx.world.trueExpectation(it.prompt, it.response));
    const moves: Record<string, number> = {};
    for (const it of items) {
      for (const m of new Set(parseResponse(it.response).map((p) => p.id))) moves[m] = (moves[m] ?? 0) + 1 / items.length;
    }
    const records: EvalRecord[] = items.map((it, i) => ({ ...it, estimated: [...est[i]!], true: [...truth[i]!], trueExpectation: trueE[i]! }));
    writeFileAtomic(join(o.dir, 'responses.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
    return { estimated: meanQuantiles(est, taus), true: meanQuantiles(truth, taus, trueE), qrm_mae: meanAbsError(est, truth, taus, trueE), moves, gate };
  } finally {
    model.dispose();
  }
}

export function readEvalRecords(dir: string): EvalRecord[] {
  return readFileSync(join(dir, 'responses.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as EvalRecord);
}

/** Runs one job in this process (its stages skipped when done already). */
export async function runJob(ctx: JobContext, job: Job): Promise<void> {
  const { cfg, out } = ctx;
  const inputs = stageInputs(cfg);
  const p = paths(out);
  if (job.kind === 'start') {
    const dir = p.start(job.seed);
    await stage(`SFT evaluation seed ${job.seed}`, dir, { ...inputs.sftEval, seed: job.seed }, () => evaluatePolicy(ctx, { adapterDir: null, seed: job.seed, dir }));
    return;
  }
  const run = RUNS.find((r) => r.name === job.run)!;
  const runDir = p.rl(run.name, job.seed);
  claimRunFolder(runDir, 'rloo'); // before its stage markers go in: the folder is an rloo run's
  const qrm = await ctx.qrm();
  // the diagnostic reward source trains on the world's exact quantiles (config.ts: rewardSource)
  const reward = cfg.rewardSource === 'truth' ? new TrueReward(ctx.world, qrm.taus) : qrm;
  const rlInputs = { ...inputs.rl, rewardSource: cfg.rewardSource, seed: job.seed, utility: run.utility };
  await stage(`rloo ${run.name} seed ${job.seed}`, join(runDir, 'stage'), rlInputs, () =>
    runRlStage({ cfg, world: ctx.world, reward, policyDir: p.policy, prompts: join(p.data, 'prompts.jsonl'), out: runDir, seed: job.seed, utility: run.utility }),
  );
  const evalDir = join(runDir, 'eval');
  await stage(`final evaluation ${run.name} seed ${job.seed}`, evalDir, rlInputs, () =>
    evaluatePolicy(ctx, { adapterDir: join(runDir, 'adapter'), seed: job.seed, dir: evalDir }),
  );
}

/** Messages between the runner and a worker. */
export type ToWorker = { job: Job; cfg: Figure3Config; out: string };
export type FromWorker = { ok: true; seconds: Record<string, number> } | { ok: false; message: string; user: boolean };

/**
 * Runs the jobs, `parallel` at a time: in this process when parallel is 1, else in `parallel`
 * worker processes (worker.ts, QRLHF_WASM_THREADS=1 and QRLHF_NATIVE_THREADS=1 unless set: two
 * processes whose tfjs and native pools each take every core oversubscribe), each taking the next job when it
 * finishes one; their output lines are prefixed with the job's name. The first failure stops the
 * others and is thrown (a user error as a QrlhfError naming the job).
 */
export async function runJobs(cfg: Figure3Config, out: string, jobs: Job[], parallel: number): Promise<void> {
  if (parallel <= 1 || jobs.length <= 1) {
    const ctx = new JobContext(cfg, out);
    try {
      for (const j of jobs) await runJob(ctx, j);
    } finally {
      await ctx.dispose();
    }
    return;
  }
  const queue = [...jobs];
  const workers: ChildProcess[] = [];
  let failed: Error | null = null;
  const script = fileURLToPath(new URL('./worker.ts', import.meta.url));
  const one = (w: number) =>
    new Promise<void>((resolve) => {
      const child = fork(script, [], {
        execArgv: process.execArgv,
        env: {
          ...process.env,
          QRLHF_WASM_THREADS: process.env['QRLHF_WASM_THREADS'] || '1',
          QRLHF_NATIVE_THREADS: process.env['QRLHF_NATIVE_THREADS'] || '1',
        },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      });
      workers.push(child);
      let current: Job | null = null;
      const prefix = () => `[${current ? jobName(current) : `worker ${w}`}] `;
      for (const [stream, sink] of [[child.stdout!, process.stderr], [child.stderr!, process.stderr]] as const) {
        let buf = '';
        stream.on('data', (c: Buffer) => {
          buf += c.toString();
          const lines = buf.split(/\r?\n/);
          buf = lines.pop()!;
          for (const l of lines) if (l.trim()) sink.write(prefix() + l + '\n');
        });
      }
      const next = () => {
        current = failed ? null : (queue.shift() ?? null);
        if (!current) {
          child.disconnect();
          return;
        }
        child.send({ job: current, cfg, out } satisfies ToWorker);
      };
      child.on('message', (m: FromWorker) => {
        if (m.ok) {
          Object.assign(stageSeconds, m.seconds);
          next();
        } else {
          failed ??= m.user ? new QrlhfError(`${jobName(current!)}: ${m.message}`) : new Error(`${jobName(current!)}: ${m.message}`);
          for (const o of workers) if (o !== child) o.kill('SIGTERM');
          child.disconnect();
        }
      });
      child.on('exit', (code, signal) => {
        if (current && !failed) failed = new Error(`${jobName(current)}: worker exited (${signal ?? `code ${code}`})`);
        resolve();
      });
      next();
    });
  log(`RL jobs: ${jobs.length}, ${parallel} worker processes side by side (one wasm thread each)`);
  await Promise.all(Array.from({ length: Math.min(parallel, jobs.length) }, (_, w) => one(w)));
  if (failed) throw failed;
}

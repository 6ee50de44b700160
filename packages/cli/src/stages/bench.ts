/**
 * `qrlhf bench`: speed of the tfjs backend on this machine (issue 3). Prints a table and, with
 * --json, writes {backend, threads, kernels, matmul: [...], train: [...], sample: [...]}.
 *
 *   matmul  products of the shapes a Llama makes (linear layers forward and backward, attention,
 *           the LM head, decoding), every layout, GFLOP/s = 2·batch·m·k·n / time;
 *   train   one LoRA forward+backward (sequence 256, batch 4, r 8 on q/k/v/o) of the "5m" and
 *           "25m" models, GFLOP/s on the 6 · params · tokens rule;
 *   sample  KV-cache generation of 128 new tokens after a 16-token prompt at batch 1 and 8.
 * --large adds square products 2048² and 4096² (a GPU's range). On webgpu every timed call ends
 * by reading one element of its result, so the time covers the GPU's work, not only its queueing.
 * --stock runs tfjs as shipped (tfjs's kernels, one thread) for the before/after comparison;
 * it only works in a fresh process (the backend is chosen once), which the command is.
 */
import * as tf from '@tensorflow/tfjs';
import {
  checkWritable,
  LlamaModel, RUN_FIELDS, Rng, defineConfig, generate, initBackend, sequenceLogProbs, wasmInfo, writeFileAtomic,
  type ConfigOf, type LlamaConfig,
} from '@qrlhf/core';

export interface MatmulRow { m: number; k: number; n: number; transposeA: boolean; transposeB: boolean; batch: number; gflops: number; what: string }
export interface TrainRow { model: string; params: number; tokens: number; step_s: number; gflops: number; tokens_per_s: number }
export interface SampleRow { model: string; batch: number; new_tokens: number; tokens_per_s: number; step_ms: number }
export interface BenchResult {
  backend: string; threads: number; kernels: 'qrlhf' | 'stock';
  /** qrlhf's native addon, when it computed the products (packages/core/native). */
  native?: { arch: string; threads: number } | null;
  matmul: MatmulRow[]; train: TrainRow[]; sample: SampleRow[];
}

export const BENCH_MODELS: Record<string, LlamaConfig> = {
  '5m': modelConfig(256, 6, 704),
  '25m': modelConfig(512, 8, 1376),
};

function modelConfig(d: number, layers: number, ffn: number): LlamaConfig {
  return {
    vocabSize: 4096, hiddenSize: d, intermediateSize: ffn, numLayers: layers, numHeads: 8, numKvHeads: 4,
    rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 512,
    bosTokenId: 1, eosTokenId: 2,
  };
}

/** [m, k, n, transposeA, transposeB, batch, what] — the 25m model's products at batch 4 × 256. */
const MATMULS: [number, number, number, boolean, boolean, number, string][] = [
  [1024, 512, 512, false, true, 1, 'q/o proj fwd x·Wᵀ'],
  [1024, 512, 1376, false, true, 1, 'gate/up fwd'],
  [1024, 1376, 512, false, true, 1, 'down fwd'],
  [1024, 512, 512, false, false, 1, 'dX = dY·W'],
  [512, 1024, 512, true, false, 1, 'dW = Xᵀ·dY'],
  [1024, 512, 4096, false, false, 1, 'LM head (kept Wᵀ)'],
  [512, 64, 256, false, true, 16, 'attn Q·Kᵀ (GQA)'],
  [512, 256, 64, false, false, 16, 'attn P·V'],
  [256, 512, 64, true, false, 16, 'attn dV = Pᵀ·dO'],
  [1024, 512, 8, false, true, 1, 'LoRA x·Aᵀ'],
  [8, 1024, 512, true, false, 1, 'LoRA dA = dHᵀ·X'],
  [1, 512, 512, false, true, 1, 'decode b1 x·Wᵀ'],
  [8, 512, 4096, false, false, 1, 'decode b8 head'],
];

/** [m, k, n] square products a GPU needs to show its speed (--large). */
const LARGE: [number, number, number][] = [
  [2048, 2048, 2048],
  [4096, 4096, 4096],
];

async function timeIt(fn: () => void | Promise<void>, minSeconds: number, minReps: number): Promise<number> {
  await fn(); // warm-up (packs weights, grows the heap, compiles GPU shaders)
  const times: number[] = [];
  const t0 = performance.now();
  while (times.length < minReps || (performance.now() - t0) / 1000 < minSeconds) {
    const s = performance.now();
    await fn();
    times.push((performance.now() - s) / 1000);
    if (times.length >= 200) break;
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!; // median
}

/**
 * Waits until t is computed. The CPU backends compute eagerly; a GPU backend queues the work, and
 * reading one element (a one-element slice, so little is copied back) waits for the queue.
 */
async function settle(t: tf.Tensor): Promise<void> {
  if (tf.getBackend() !== 'webgpu') return;
  const one = tf.tidy(() => tf.slice(t.reshape([-1]), 0, 1));
  await one.data();
  one.dispose();
}

export async function benchMatmul(quick: boolean, large = false): Promise<MatmulRow[]> {
  const rows: MatmulRow[] = [];
  let seed = 1;
  const shapes = [...MATMULS, ...(large ? LARGE.map(([m, k, n]) => [m, k, n, false, false, 1, `square ${m}²`] as const) : [])];
  for (const [m, k, n, tA, tB, batch, what] of shapes) {
    const lead = batch > 1 ? [batch] : [];
    const a = tf.randomUniform([...lead, ...(tA ? [k, m] : [m, k])], -1, 1, 'float32', seed++);
    const b = tf.randomUniform([...lead, ...(tB ? [n, k] : [k, n])], -1, 1, 'float32', seed++);
    const s = await timeIt(async () => {
      const c = tf.matMul(a, b, tA, tB);
      await settle(c);
      c.dispose();
    }, quick ? 0.1 : 0.4, 3);
    rows.push({ m, k, n, transposeA: tA, transposeB: tB, batch, gflops: (2 * batch * m * k * n) / s / 1e9, what });
    tf.dispose([a, b]);
  }
  return rows;
}

function paramCount(model: LlamaModel): number {
  let n = 0;
  for (const v of Object.values(model.weights)) n += v.size;
  return n;
}

function randomIds(rng: Rng, B: number, T: number, V: number): number[][] {
  return Array.from({ length: B }, () => Array.from({ length: T }, () => 3 + Math.floor(rng.next() * (V - 3))));
}

export async function benchTrain(name: string, reps: number): Promise<TrainRow> {
  const cfg = BENCH_MODELS[name]!;
  const model = LlamaModel.random(cfg, 7);
  const rng = new Rng(11);
  try {
    const adapter = model.addLora({ r: 8, alpha: 16, dropout: 0, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] }, rng);
    const B = 4, T = 256;
    const ids = tf.tensor2d(randomIds(rng, B, T, cfg.vocabSize), [B, T], 'int32');
    const mask = tf.ones([B, T]) as tf.Tensor2D;
    const vars = Object.values(adapter.variables);
    const step = async () => {
      const { value, grads } = tf.variableGrads(() => {
        const lp = sequenceLogProbs(model, ids, mask, mask, { training: true });
        return tf.neg(tf.mean(lp)) as tf.Scalar;
      }, vars);
      await value.data();
      await Promise.all(Object.values(grads).map((g) => g.data()));
      value.dispose();
      tf.dispose(grads);
    };
    const s = await timeIt(step, 0, reps);
    tf.dispose([ids, mask]);
    const params = paramCount(model);
    const tokens = B * T;
    return { model: name, params, tokens, step_s: s, gflops: (6 * params * tokens) / s / 1e9, tokens_per_s: tokens / s };
  } finally {
    model.dispose();
  }
}

export async function benchSample(name: string, batch: number, newTokens: number): Promise<SampleRow> {
  const cfg = BENCH_MODELS[name]!;
  const model = LlamaModel.random(cfg, 9);
  const rng = new Rng(13);
  try {
    const prompts = randomIds(rng, batch, 16, cfg.vocabSize);
    const opts = { maxNewTokens: newTokens, temperature: 0, eosTokenId: [] as number[], rng };
    await generate(model, prompts, { ...opts, maxNewTokens: 4 }); // warm-up
    const s = await timeIt(async () => {
      const r = await generate(model, prompts, opts);
      if (r.tokens[0]!.length !== newTokens) throw new Error('generate stopped early');
    }, 0, 2);
    return { model: name, batch, new_tokens: newTokens, tokens_per_s: (batch * newTokens) / s, step_ms: (s / newTokens) * 1000 };
  } finally {
    model.dispose();
  }
}

function pad(s: string | number, w: number): string {
  return String(s).padStart(w);
}

export function formatBench(r: BenchResult): string {
  const nat = r.native ? `, native ${r.native.arch} products on ${r.native.threads} thread(s)` : '';
  const out: string[] = [`backend ${r.backend}, ${r.threads} thread(s), ${r.kernels} kernels${nat}`];
  if (r.matmul.length) {
    out.push('', 'matmul                        m     k     n  tA tB batch  GFLOP/s');
    for (const x of r.matmul) {
      out.push(`${x.what.padEnd(24)}${pad(x.m, 7)}${pad(x.k, 6)}${pad(x.n, 6)}  ${x.transposeA ? 'T' : '-'}  ${x.transposeB ? 'T' : '-'}${pad(x.batch, 6)}${pad(x.gflops.toFixed(1), 9)}`);
    }
  }
  if (r.train.length) {
    out.push('', 'train (LoRA fwd+bwd)   params  tokens   step s  GFLOP/s  tokens/s');
    for (const x of r.train) {
      out.push(`${x.model.padEnd(18)}${pad((x.params / 1e6).toFixed(2) + 'M', 10)}${pad(x.tokens, 8)}${pad(x.step_s.toFixed(3), 9)}${pad(x.gflops.toFixed(1), 9)}${pad(x.tokens_per_s.toFixed(0), 10)}`);
    }
  }
  if (r.sample.length) {
    out.push('', 'sample (KV cache)  batch  new  tokens/s  ms/step');
    for (const x of r.sample) {
      out.push(`${x.model.padEnd(17)}${pad(x.batch, 6)}${pad(x.new_tokens, 5)}${pad(x.tokens_per_s.toFixed(0), 10)}${pad(x.step_ms.toFixed(2), 9)}`);
    }
  }
  return out.join('\n');
}

export const BENCH_SCHEMA = defineConfig({
  suite: { type: 'string[]', default: ['matmul', 'train', 'sample'], choices: ['matmul', 'train', 'sample'], doc: 'what to measure' },
  models: { type: 'string[]', default: ['5m', '25m'], choices: ['5m', '25m'], doc: 'model sizes for train/sample' },
  json: { type: 'string', default: null, nullable: true, path: true, doc: 'also write the results as JSON to this file' },
  ...RUN_FIELDS,
  stock: { type: 'boolean', default: false, doc: 'tfjs as shipped: its own wasm kernels on one thread, no native addon (the "before")' },
  quick: { type: 'boolean', default: false, doc: 'fewer repetitions and 32 new tokens (smoke test)' },
  large: { type: 'boolean', default: false, doc: 'also time square products 2048² and 4096² (for GPUs)' },
});
export type BenchConfig = ConfigOf<typeof BENCH_SCHEMA>;

export async function runBench(cfg: BenchConfig): Promise<void> {
  if (cfg.json !== null) checkWritable(cfg.json, 'file'); // before minutes of benchmarks, not after
  if (cfg.stock) {
    process.env['QRLHF_STOCK_KERNELS'] = '1';
    process.env['QRLHF_WASM_THREADS'] = '1';
    process.env['QRLHF_NATIVE'] = '0';
  }
  const choice = await initBackend(cfg.backend);
  const w = choice.tfName === 'wasm' ? wasmInfo() : null;
  const result: BenchResult = {
    backend: choice.tfName, threads: w ? w.threads : 1, kernels: w?.kernels ? 'qrlhf' : 'stock',
    native: w?.native.active ? { arch: w.native.arch ?? '?', threads: w.native.threads ?? 1 } : null,
    matmul: [], train: [], sample: [],
  };
  const log = (s: string) => process.stderr.write(s + '\n');
  if (cfg.suite.includes('matmul')) {
    log('bench: matmul ...');
    result.matmul = await benchMatmul(cfg.quick, cfg.large);
  }
  if (cfg.suite.includes('train')) {
    for (const m of cfg.models) {
      log(`bench: train ${m} ...`);
      result.train.push(await benchTrain(m, cfg.quick ? 1 : 3));
    }
  }
  if (cfg.suite.includes('sample')) {
    for (const m of cfg.models) {
      for (const b of [1, 8]) {
        log(`bench: sample ${m} batch ${b} ...`);
        result.sample.push(await benchSample(m, b, cfg.quick ? 32 : 128));
      }
    }
  }
  process.stdout.write(formatBench(result) + '\n');
  if (cfg.json !== null) writeFileAtomic(cfg.json, JSON.stringify(result, null, 2) + '\n');
}

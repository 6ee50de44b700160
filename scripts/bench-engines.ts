/**
 * Engines on one machine (issue 16): RLOO steps/s with `engine.kind local` vs `openai` against 1
 * and 2 `qrlhf serve` child processes on loopback, and QRM feature rows/s in process vs through
 * /v1/embeddings, on a small random Llama (d 128, 4 layers, character tokenizer). On a few CPU
 * cores this mostly measures the HTTP path's overhead (and the cost of the servers competing with
 * the learner for the same cores), not an engine's speed. Heavy: run it under the CPU lock.
 *
 *   flock /tmp/cpu.lock npm run bench:engines -- [--steps 4] [--rows 256] [--backend auto]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer, initBackend, loadModel, saveHfFolder, type BackendName } from '@qrlhf/core';
import { extractRatingFeatures, openAiFeatureSource } from '@qrlhf/qrm';
import { readRlooMetrics, runRloo, type RlooConfig } from '@qrlhf/rloo';
import { charTokenizerJson, scaledRandomModel, smallConfig, stubReward, tinyConfig, writePrompts } from '../packages/rloo/test/fixture.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const flag = (name: string, dflt: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1]! : dflt;
};
const steps = Number(flag('steps', '4'));
const rows = Number(flag('rows', '256'));
const backend = flag('backend', 'auto') as BackendName;

const dir = mkdtempSync(path.join(os.tmpdir(), 'qrlhf-bench-engines-'));
const config = { ...tinyConfig(), hiddenSize: 128, intermediateSize: 256, numLayers: 4, numHeads: 4, numKvHeads: 2, maxPositionEmbeddings: 128 };

function serve(policy: string): Promise<{ url: string; proc: ChildProcess }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--conditions=source', '--import=tsx', 'packages/cli/src/bin.ts', 'serve', '--model', policy, '--host', '127.0.0.1', '--port', '0', '--backend', backend], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      const m = /listening on (http:\/\/\S+\/v1)/.exec(out);
      if (m) resolve({ url: m[1]!, proc });
    });
    proc.once('exit', (code) => reject(new Error(`qrlhf serve exited (${code})`)));
  });
}

async function rlooStepsPerSecond(label: string, policy: string, prompts: string, engine: Record<string, unknown> | null): Promise<number> {
  const out = path.join(dir, `rloo-${label}`);
  const cfg = { ...smallConfig({ policy, prompts, out, steps, batchSize: 8, k: 4, maxNewTokens: 32, maxPromptLength: 100, generationBatchSize: 32, microBatchSize: 16, checkpointEvery: 0, sampleEvery: 0, backend }), ...(engine ? { engine } : {}) } as RlooConfig;
  await runRloo(cfg, { reward: stubReward(), quiet: true });
  // the first step pays for warm-up (kernels, the servers' first decode): report the others
  const times = readRlooMetrics(out).slice(1).map((m) => m['time/step_s'] as number);
  return times.length / times.reduce((a, b) => a + b, 0);
}

async function main(): Promise<void> {
  await initBackend(backend, { quiet: true });
  const policy = path.join(dir, 'policy');
  const model = scaledRandomModel(config, 1, 0.3);
  await saveHfFolder(policy, model, Tokenizer.fromJSON(charTokenizerJson(), { config }));
  model.dispose();
  const prompts = writePrompts(path.join(dir, 'prompts.jsonl'), 64);
  const ratings = path.join(dir, 'ratings.jsonl');
  writeFileSync(ratings, Array.from({ length: rows }, (_, i) => JSON.stringify({ prompt: `\n\nHuman: tell me of ${'owls tea rain bees'.split(' ')[i % 4]}?\n\nAssistant:`, response: ` they are ${'ab cd ef gh ij'.slice(0, 2 + (i % 12))}.`, score: i % 5 })).join('\n') + '\n');

  const servers = [await serve(policy), await serve(policy)];
  const table: [string, string, string][] = [];
  try {
    const local = await rlooStepsPerSecond('local', policy, prompts, null);
    const one = await rlooStepsPerSecond('openai-1', policy, prompts, { kind: 'openai', baseUrl: servers[0]!.url });
    const two = await rlooStepsPerSecond('openai-2', policy, prompts, { kind: 'openai', baseUrls: servers.map((s) => s.url) });
    table.push(['RLOO steps/s (8 prompts x 4, 32 new tokens)', local.toFixed(3), `${one.toFixed(3)} | ${two.toFixed(3)}`]);

    const { model: m, tokenizer } = await loadModel(policy);
    const time = async (fn: () => Promise<unknown>) => {
      const t0 = performance.now();
      await fn();
      return (performance.now() - t0) / 1000;
    };
    const tLocal = await time(() => extractRatingFeatures({ input: ratings, output: path.join(dir, 'f-local.safetensors'), backbone: { model: m, tokenizer }, batchSize: 16 }));
    m.dispose();
    const rates: number[] = [];
    for (const urls of [[servers[0]!.url], servers.map((s) => s.url)]) {
      const source = await openAiFeatureSource({ baseUrls: urls, model: 'policy', tokenizer, maxTokens: config.maxPositionEmbeddings, batchSize: 16 });
      rates.push(rows / (await time(() => extractRatingFeatures({ input: ratings, output: path.join(dir, `f-${urls.length}.safetensors`), source }))));
    }
    table.push([`QRM features rows/s (${rows} rows, stage 1)`, (rows / tLocal).toFixed(1), `${rates[0]!.toFixed(1)} | ${rates[1]!.toFixed(1)}`]);
  } finally {
    for (const s of servers) s.proc.kill('SIGKILL');
  }
  process.stdout.write(
    `engines on ${os.cpus().length} cores, backend ${backend}, policy d ${config.hiddenSize} x ${config.numLayers} layers; steps/s over steps 2..${steps}\n\n` +
      '| what | local | openai: 1 server | 2 servers |\n|---|---|---|---|\n' +
      table.map(([w, l, o]) => `| ${w} | ${l} | ${o.replace(' | ', ' | ')} |`).join('\n') +
      '\n',
  );
}

await main();

/**
 * The QRM of a finished Figure 3 run against the world's truth on hand-written responses: each
 * move sequence below, rendered for the first `n` evaluation prompts (the object asked about, one
 * template draw per prompt), scored by the run's QRM exactly as RL scores (the run's
 * normalisation) and by the world's exact quantiles. It shows what the QRM tells RL about each way
 * of extending an answer, which the final policies' own responses cannot (they are what RL chose).
 *
 *   node --conditions=source --import=tsx experiments/figure3/canonical.ts RUN_DIR [n]
 *
 * Per sequence, means over the prompts: the expectation and q0.05, estimated and true, and the
 * exponential utility U(λ) = mean_k −exp(−λ q_k) at the run's λ (summary.json), estimated and true.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, Rng, initBackend } from '@qrlhf/core';
import { QuantileRewardModel, expectationUtility, exponentialUtility, type QrmNormalise } from '@qrlhf/qrm';
import { createWorld, type MoveId } from '@qrlhf/world';
import { paths } from './jobs.js';
import { NormalisedQrm } from './rl.js';
import { readPrompts } from './sample.js';

const SEQUENCES: MoveId[][] = [
  ['answer'], ['answer', 'detail'], ['answer', 'caution'], ['answer', 'joke'],
  ['answer', 'detail', 'caution'], ['answer', 'detail', 'joke'], ['answer', 'answer'], ['refuse'], ['ramble'],
];

const [out, nArg] = process.argv.slice(2);
if (!out) throw new QrlhfError('usage: canonical.ts RUN_DIR [n]  (a finished npm run figure3 folder)');
const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as {
  lambda: { lambda: number }; config: { world: { seed: number }; rloo: { rewardBatchSize: number; qrmNormalise: string | null } };
};
const lambda = summary.lambda.lambda;
await initBackend('auto');
const world = createWorld(summary.config.world.seed);
const qrm = new NormalisedQrm(await QuantileRewardModel.load(paths(out).qrmModel), summary.config.rloo.rewardBatchSize, summary.config.rloo.qrmNormalise as QrmNormalise | null);
const prompts = readPrompts(join(out, 'data', 'eval_prompts.jsonl')).slice(0, Number(nArg ?? 100));
const taus = qrm.taus;
console.log(`${out}: ${prompts.length} evaluation prompts, lambda ${lambda.toFixed(3)}`);
console.log('| moves | expectation (QRM / true) | q0.05 (QRM / true) | U(λ) (QRM / true) |\n|---|---|---|---|');
try {
  for (const moves of SEQUENCES) {
    const rows = prompts.map((prompt, i) => ({ prompt, response: world.renderResponse(prompt, moves, new Rng(i + 1)) }));
    const est = await qrm.quantiles(rows);
    const acc = { em: 0, tm: 0, eq: 0, tq: 0, eu: 0, tu: 0 };
    rows.forEach((r, i) => {
      const t = world.trueQuantiles(r.prompt, r.response, taus).reward;
      acc.em += expectationUtility(est[i]!); acc.tm += world.trueExpectation(r.prompt, r.response);
      acc.eq += est[i]![0]!; acc.tq += t[0]!;
      acc.eu += exponentialUtility(est[i]!, lambda); acc.tu += exponentialUtility(t, lambda);
    });
    const f = (x: number) => (x / rows.length).toFixed(3);
    console.log(`| ${moves.join('+')} | ${f(acc.em)} / ${f(acc.tm)} | ${f(acc.eq)} / ${f(acc.tq)} | ${f(acc.eu)} / ${f(acc.tu)} |`);
  }
} finally {
  qrm.dispose();
}

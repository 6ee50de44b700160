/**
 * The two RLOO runs of Figure 3 and the reward source they share.
 */
import type { QuantileRewardModel } from '@qrlhf/qrm';
import { runRloo, rlooDefaults, type RlooBatchItem, type RewardSource } from '@qrlhf/rloo';
import type { World } from '@qrlhf/world';
import type { Figure3Config } from './config.js';
import { SUMMARY_KEYS, meanQuantiles } from './summary.js';

export const RUNS = [
  { name: 'risk-neutral', utility: 'expectation' },
  { name: 'risk-aware', utility: 'exponential' },
] as const;

/**
 * The QRM as a reward source on the labels' [0, 1] scale: its mixed quantiles divided by the gate
 * weight on the attributes that carry reward after debiasing (p_j < 1; verbosity itself is zeroed
 * by ArmoRM's rule, p = 1). The Bradley-Terry loss leaves the scale beta free, which would stretch
 * the reward and with it the meaning of lambda, and weight left on the zeroed attribute would
 * shrink it; dividing both out makes the reward a convex mix of attribute quantiles, comparable
 * with the world's true reward quantiles.
 */
export class NormalisedQrm implements RewardSource {
  constructor(readonly qrm: QuantileRewardModel) {}

  get taus(): Float32Array {
    return this.qrm.taus;
  }

  async quantiles(items: readonly { prompt: string; response: string }[]): Promise<Float32Array[]> {
    const scores = await this.qrm.score(items, { batchSize: 32 });
    const keep = this.qrm.debiasPenalties.map((p) => p < 1);
    return scores.map((s) => {
      let g = 0;
      s.gate.forEach((x, m) => {
        if (keep[m]) g += x;
      });
      return s.quantiles.map((q) => q / g);
    });
  }

  dispose(): void {
    this.qrm.dispose();
  }
}

/**
 * One RLOO run of Figure 3 (resumes from its checkpoint when interrupted). Besides the QRM's
 * quantiles, every step logs the world's exact quantiles of the same responses as `true/q0.05` ….
 */
export async function runRlStage(o: {
  cfg: Figure3Config;
  world: World;
  qrm: NormalisedQrm;
  policyDir: string;
  prompts: string;
  out: string;
  seed: number;
  utility: (typeof RUNS)[number]['utility'];
}): Promise<{ steps: number; last: Record<string, unknown> | null }> {
  const { cfg } = o;
  const taus = o.qrm.taus;
  const r = await runRloo(
    {
      ...rlooDefaults(),
      policy: o.policyDir,
      prompts: o.prompts,
      out: o.out,
      seed: o.seed,
      backend: cfg.backend as ReturnType<typeof rlooDefaults>['backend'],
      resume: true,
      utility: o.utility,
      lambda: cfg.lambda,
      k: cfg.k,
      batchSize: cfg.rlPromptsPerStep,
      steps: cfg.rlSteps,
      lr: cfg.rlLr,
      loraR: cfg.loraR,
      loraAlpha: cfg.loraAlpha,
      betaKl: cfg.betaKl,
      maxNewTokens: cfg.maxNewTokens,
      temperature: cfg.temperature,
      microBatchSize: 32,
      generationBatchSize: 32,
      rewardBatchSize: 32,
      sampleEvery: 10,
      checkpointEvery: 10,
    },
    {
      reward: o.qrm,
      extraMetrics: (batch: RlooBatchItem[]) => {
        const truth = batch.map((b) => o.world.trueQuantiles(b.prompt, b.response, taus).reward);
        const q = meanQuantiles(truth, taus, batch.map((b) => o.world.trueExpectation(b.prompt, b.response)));
        return Object.fromEntries(SUMMARY_KEYS.map((k) => [`true/${k}`, q[k]]));
      },
    },
  );
  return { steps: r.steps, last: r.last };
}

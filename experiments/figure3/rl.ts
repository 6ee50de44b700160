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
 * The QRM as a reward source on the labels' [0, 1] scale: @qrlhf/qrm's 'kept-weight'
 * normalisation (the mixed quantiles divided by the gate weight on the attributes that still carry
 * reward after debiasing; see packages/qrm/src/model.ts), the same option `qrlhf rloo
 * --qrm-normalise kept-weight` uses, so lambda means the same in both.
 */
export class NormalisedQrm implements RewardSource {
  constructor(readonly qrm: QuantileRewardModel) {
    qrm.normalise = 'kept-weight';
  }

  get taus(): Float32Array {
    return this.qrm.taus;
  }

  async quantiles(items: readonly { prompt: string; response: string }[]): Promise<Float32Array[]> {
    return (await this.qrm.score(items, { batchSize: 32 })).map((s) => s.quantiles);
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

/**
 * The two RLOO runs of Figure 3 and the reward source they share.
 */
import type { QuantileRewardModel } from '@qrlhf/qrm';
import { runRloo, type RlooBatchItem, type RewardSource } from '@qrlhf/rloo';
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
  constructor(
    readonly qrm: QuantileRewardModel,
    /** Sequences per forward pass of the QRM's backbone. */
    readonly batchSize: number,
  ) {
    qrm.normalise = 'kept-weight';
  }

  get taus(): Float32Array {
    return this.qrm.taus;
  }

  async quantiles(items: readonly { prompt: string; response: string }[]): Promise<Float32Array[]> {
    return (await this.qrm.score(items, { batchSize: this.batchSize })).map((s) => s.quantiles);
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
    // the rloo block as configured, and what the pipeline decides: inputs, run folder, seed, utility
    { ...cfg.rloo, policy: o.policyDir, tokenizer: null, qrm: null, prompts: o.prompts, out: o.out, seed: o.seed, utility: o.utility, resume: true, backend: cfg.backend },
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

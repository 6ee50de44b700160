/**
 * The two RLOO runs of Figure 3 and the reward sources they may use: the QRM (the experiment), or
 * the world's exact quantiles (a diagnostic: what RL reaches in truth with this policy and budget,
 * apart from the QRM's error).
 */
import type { QrmNormalise, QuantileRewardModel } from '@qrlhf/qrm';
import { runRloo, type RlooBatchItem, type RewardSource } from '@qrlhf/rloo';
import type { World } from '@qrlhf/world';
import type { Figure3Config } from './config.js';
import { SUMMARY_KEYS, meanQuantiles } from './summary.js';

export const RUNS = [
  { name: 'risk-neutral', utility: 'expectation' },
  { name: 'risk-aware', utility: 'exponential' },
] as const;

/**
 * The QRM as a reward source, scaled as the rloo block's `qrmNormalise` says (the same option as
 * `qrlhf rloo --qrm-normalise`, so lambda means the same in both): 'kept-weight' divides the mixed
 * quantiles by the gate weight on the attributes that still carry reward after debiasing (on the
 * labels' [0, 1] scale; see packages/qrm/src/model.ts), 'none' is eq. 3 as is, null the QRM's own
 * setting in qrm.json.
 */
export class NormalisedQrm implements RewardSource {
  constructor(
    readonly qrm: QuantileRewardModel,
    /** Sequences per forward pass of the QRM's backbone. */
    readonly batchSize: number,
    normalise: QrmNormalise | null,
  ) {
    if (normalise !== null) qrm.normalise = normalise;
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
 * The diagnostic reward source (`rewardSource: 'truth'`): the world's exact quantiles of each
 * response's reward at the QRM's levels. RL on it shows what the policy can reach in truth, so a
 * flat true curve under the QRM can be told apart from a policy that cannot learn.
 */
export class TrueReward implements RewardSource {
  constructor(
    readonly world: World,
    readonly taus: Float32Array,
  ) {}

  async quantiles(items: readonly { prompt: string; response: string }[]): Promise<Float32Array[]> {
    return items.map((it) => this.world.trueQuantiles(it.prompt, it.response, this.taus).reward);
  }
}

/**
 * One RLOO run of Figure 3 (resumes from its checkpoint when interrupted). Besides the reward
 * source's quantiles (reward/q0.05 …), every step logs the world's exact quantiles of the same
 * responses as `truth/q0.05` … `truth/expectation` (the metric names of core's names.ts).
 */
export async function runRlStage(o: {
  cfg: Figure3Config;
  world: World;
  reward: RewardSource;
  policyDir: string;
  prompts: string;
  out: string;
  seed: number;
  utility: (typeof RUNS)[number]['utility'];
}): Promise<{ steps: number; last: Record<string, unknown> | null }> {
  const { cfg } = o;
  const taus = o.reward.taus;
  const r = await runRloo(
    // the rloo block as configured, and what the pipeline decides: inputs, run folder, seed, utility
    { ...cfg.rloo, policy: o.policyDir, tokenizer: null, qrm: null, prompts: o.prompts, out: o.out, seed: o.seed, utility: o.utility, resume: true, backend: cfg.backend },
    {
      reward: o.reward,
      extraMetrics: (batch: RlooBatchItem[]) => {
        const truth = batch.map((b) => o.world.trueQuantiles(b.prompt, b.response, taus).reward);
        const q = meanQuantiles(truth, taus, batch.map((b) => o.world.trueExpectation(b.prompt, b.response)));
        return Object.fromEntries(SUMMARY_KEYS.map((k) => [`truth/${k}`, q[k]]));
      },
    },
  );
  return { steps: r.steps, last: r.last };
}

/**
 * Where a response's reward distribution comes from: a RewardSource gives K quantiles (at levels
 * `taus`) per (prompt, response). The trainer turns them into one number with a utility (SPEC §5).
 * Two sources ship: a QuantileRewardModel, and a user's function.
 */
import { QrlhfError } from '@qrlhf/core';
import type { QuantileRewardModel } from '@qrlhf/qrm';

export interface PromptResponseText {
  prompt: string;
  response: string;
}

/** The reward hook (DESIGN.md): K non-decreasing quantiles of each response's reward, at levels taus. */
export interface RewardSource {
  taus: Float32Array;
  quantiles(items: PromptResponseText[]): Promise<Float32Array[]>;
}

/** A RewardSource over a quantile reward model (its backbone is loaded on the first call). */
export function qrmRewardSource(qrm: QuantileRewardModel, opts: { batchSize?: number } = {}): RewardSource {
  return {
    taus: qrm.taus,
    async quantiles(items) {
      const scores = await qrm.score(items, { batchSize: opts.batchSize ?? 8 });
      return scores.map((s) => s.quantiles);
    },
  };
}

/**
 * A RewardSource from a function of one (prompt, response): it returns the K quantiles at `taus`
 * (any array-like of numbers, or a promise of one).
 */
export function functionRewardSource(
  taus: ArrayLike<number>,
  fn: (item: PromptResponseText) => ArrayLike<number> | Promise<ArrayLike<number>>,
): RewardSource {
  const t = Float32Array.from(taus);
  for (let i = 0; i < t.length; i++) {
    if (!(t[i]! > 0 && t[i]! < 1) || (i > 0 && !(t[i]! > t[i - 1]!))) {
      throw new QrlhfError(`functionRewardSource: taus must increase strictly inside (0, 1), got ${Array.from(t).join(', ')}`);
    }
  }
  return {
    taus: t,
    async quantiles(items) {
      const out: Float32Array[] = [];
      for (const it of items) out.push(Float32Array.from(await fn(it)));
      return out;
    },
  };
}

/** Checks a source's answer: one row of K finite values per item; throws a QrlhfError naming the fault. */
export function checkQuantiles(rows: Float32Array[], n: number, K: number, items: PromptResponseText[]): void {
  if (!Array.isArray(rows) || rows.length !== n) {
    throw new QrlhfError(`reward source: returned ${Array.isArray(rows) ? rows.length : typeof rows} rows for ${n} responses`);
  }
  rows.forEach((q, i) => {
    if (!(q instanceof Float32Array) || q.length !== K) {
      throw new QrlhfError(`reward source: response ${i} got ${q instanceof Float32Array ? q.length : typeof q} quantiles, expected ${K} (one per tau)`);
    }
    for (let j = 0; j < K; j++) {
      if (!Number.isFinite(q[j]!)) {
        throw new QrlhfError(`reward source: quantile ${j} of response ${i} is ${q[j]} (response ${JSON.stringify(items[i]?.response.slice(0, 80))})`);
      }
    }
  });
}

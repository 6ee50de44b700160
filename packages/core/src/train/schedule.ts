import { check } from '../errors.js';

/** A learning-rate schedule: the rate of the update with 0-based index `step`. */
export type Schedule = (step: number) => number;

/**
 * Linear warmup then cosine decay. For the update with 0-based index s, W = warmupSteps,
 * T = totalSteps:
 *   s < W:       lr · (s + 1) / W              (the first update already moves; the last warmup one is at lr)
 *   W ≤ s < T:   minLr + (lr − minLr) · ½ (1 + cos(π (s − W) / (T − W)))
 *   s ≥ T:       minLr
 * (Hugging Face's get_cosine_schedule_with_warmup, except that its warmup starts at 0, a wasted
 * first update, where this one starts at lr / W.)
 */
export function cosineSchedule(o: { lr: number; warmupSteps: number; totalSteps: number; minLr?: number }): Schedule {
  const { lr, warmupSteps: W, totalSteps: T } = o;
  const minLr = o.minLr ?? 0;
  check(Number.isFinite(lr) && lr >= 0, `cosineSchedule: lr must be a number >= 0, got ${lr}`);
  check(Number.isFinite(minLr) && minLr >= 0 && minLr <= lr, `cosineSchedule: minLr must be in [0, lr], got ${minLr}`);
  check(Number.isInteger(W) && W >= 0, `cosineSchedule: warmupSteps must be an integer >= 0, got ${W}`);
  check(Number.isInteger(T) && T >= W, `cosineSchedule: totalSteps must be an integer >= warmupSteps (${W}), got ${T}`);
  return (s: number) => {
    if (s < W) return (lr * (s + 1)) / W;
    if (s >= T) return minLr;
    const p = (s - W) / (T - W);
    return minLr + (lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * p));
  };
}

/** The same rate at every step. */
export function constantSchedule(lr: number): Schedule {
  check(Number.isFinite(lr) && lr >= 0, `constantSchedule: lr must be a number >= 0, got ${lr}`);
  return () => lr;
}

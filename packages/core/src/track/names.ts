/**
 * Metric names: one scheme for every stage, namespaced as TRL names its trainers' logs
 * (`objective/kl`, `policy/entropy`, …), the same in metrics.jsonl, the console line, W&B (which
 * groups a chart panel per namespace) and `qrlhf plot`. The table of every name, its meaning and the
 * stage that writes it is in docs/DESIGN.md ("Metric names").
 *
 *   step            the optimiser step the row follows (0: before the first update); not namespaced
 *   objective/…     the RL objective's terms: utility, kl, rlhf_reward, advantage_abs
 *   reward/…        the reward model's estimate of the sampled responses: q0.05 …, expectation
 *   truth/…         an experiment's exact values for the same responses (figure3: the world's quantiles)
 *   policy/…        the policy's samples: entropy, response_length, eos_rate
 *   ppo/…           the clipped updates (ppoEpochs > 0): clipfrac, approx_kl
 *   train/…         the update itself: loss, grad_norm, lr, epoch, accuracy (the QRM gate's pairs)
 *   eval/…          held-out evaluation: loss, token_accuracy, tokens, accuracy (the gate's pairs)
 *   gate/…          the QRM gate's own parameters: beta (its learned scale)
 *   time/…, data/…  throughput and data accounting: step_s, tokens_per_s, filtered_prompts
 *
 * Runs written before this scheme used flat names (`kl`, `q0.05`, `true/q0.05`, SFT evaluation
 * rows reusing `loss`, and `qrm gate --metrics` rows marked `stage: "gate"` with `valLoss`, `beta`,
 * …). LEGACY_METRIC_NAMES is the one old → new table; readMetricsFile passes every row through
 * upgradeMetricRow, so the plot, the figure3 readers and resume read old and new runs alike.
 */
import type { Metrics } from './sink.js';

/** The metric name of a quantile level in a namespace: ('reward', 0.05) → 'reward/q0.05'. */
export function quantileMetric(namespace: string, tau: number): string {
  return `${namespace}/q${tau.toFixed(2)}`;
}

/** Old flat name → today's name (quantile levels and the `true/` prefix are handled by upgradeMetricName). */
export const LEGACY_METRIC_NAMES: Readonly<Record<string, string>> = {
  // rloo
  expectation: 'reward/expectation',
  utility: 'objective/utility',
  kl: 'objective/kl',
  reward: 'objective/rlhf_reward',
  advantage_abs: 'objective/advantage_abs',
  entropy: 'policy/entropy',
  response_length: 'policy/response_length',
  eos_rate: 'policy/eos_rate',
  step_time_s: 'time/step_s',
  filtered_prompts: 'data/filtered_prompts',
  // rloo and sft
  loss: 'train/loss',
  grad_norm: 'train/grad_norm',
  lr: 'train/lr',
  // figure3 pretraining
  loss_smoothed: 'train/loss_smoothed',
  // sft
  epoch: 'train/epoch',
  tokens_per_s: 'time/tokens_per_s',
  eval_loss: 'eval/loss',
  token_accuracy: 'eval/token_accuracy',
  eval_tokens: 'eval/tokens',
  // qrm gate (its old rows carry `stage: "gate"`; their `epoch`: upgradeMetricRow)
  accuracy: 'train/accuracy',
  beta: 'gate/beta',
  valLoss: 'eval/loss',
  valAccuracy: 'eval/accuracy',
};

/** Keys of an old gate row that are bookkeeping, not metrics: the row marker and the run's step count (the last row's `step`). */
const OLD_GATE_BOOKKEEPING = new Set(['stage', 'totalSteps']);

/**
 * Today's name of a key as an old run wrote it (`row` gives the context: an SFT evaluation row,
 * marked `split: "eval"`, wrote its held-out loss as `loss`). Names already namespaced, `step` and
 * unknown keys are returned as they are.
 */
export function upgradeMetricName(key: string, row: Readonly<Record<string, unknown>> = {}): string {
  if (key.startsWith('true/')) return `truth/${key.slice('true/'.length)}`;
  if (key.includes('/')) return key;
  if (/^q\d\.\d\d$/.test(key)) return `reward/${key}`;
  if (key === 'loss' && row['split'] === 'eval') return 'eval/loss';
  return LEGACY_METRIC_NAMES[key] ?? key;
}

/**
 * A metrics row under today's names (a row already in them is returned unchanged, as a copy). When
 * an old and a new key land on the same name (an old SFT eval row's `loss` and `eval_loss`, the
 * same number), the first one in the row is kept.
 *
 * An old `qrm gate --metrics` row (`stage: "gate"`) also drops its bookkeeping (`stage`,
 * `totalSteps`), and its `epoch`, the 0-based index e of the pass the step is in, becomes
 * train/epoch = e + 1, the passes begun: today's train/epoch counts passes done, fractionally
 * (as SFT's), which the old row cannot give within a pass (it has no pair count); e + 1 is exact
 * on each pass's last step (the row with the held-out eval/…) and at most 1 high before it.
 */
export function upgradeMetricRow<R extends Record<string, unknown> = Metrics>(row: R): R {
  const oldGate = row['stage'] === 'gate';
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(row)) {
    if (oldGate && OLD_GATE_BOOKKEEPING.has(k)) continue;
    const name = upgradeMetricName(k, row);
    if (!(name in out)) out[name] = oldGate && k === 'epoch' && typeof v === 'number' ? v + 1 : v;
  }
  return out as R;
}

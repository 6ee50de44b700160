/**
 * On-policy ratings: responses sampled from the SFT policy itself, rated by the world's raters as
 * its other ratings are, and added to the QRM's stage-1 data. InstructGPT collected its comparisons
 * on the policy's own samples for the same reason: a reward model fitted only on the behaviour
 * policy's text is biased on what the trained policy writes (here: the tiny policy's garbled and
 * off-topic sentences, which the behaviour data hardly contain). The QRM then depends on the SFT
 * policy, so its stage comes after SFT.
 */
import { Rng, defineConfig, loadModel, seedField, writeFileAtomic, type ConfigOf } from '@qrlhf/core';
import { rateResponses, type World } from '@qrlhf/world';
import { readPrompts, sampleResponses, type Sampling } from './sample.js';

/** The on-policy rating stage (the experiment's `policyRatings` block). */
export const POLICY_RATINGS_SCHEMA = defineConfig({
  responses: { type: 'int', default: 0, min: 0, doc: "responses sampled from the SFT policy (one per RL prompt, in file order, cycling) and rated by the world, added to the QRM's ratings; 0 = none (the QRM sees the behaviour policy's text only)" },
  ratersPerResponse: { type: 'int', default: 3, min: 1, doc: 'raters per sampled response' },
  missingRate: { type: 'number', default: 0.05, min: 0, max: 1, doc: 'probability that one attribute label of a rating row is missing (null)' },
  seed: seedField('seed of the sampling and of the raters drawn'),
});
export type PolicyRatingsConfig = ConfigOf<typeof POLICY_RATINGS_SCHEMA>;

/**
 * Samples `cfg.responses` responses from the policy in `policyDir` (decoded as RLOO decodes them:
 * special tokens dropped), rates each with the world's raters, and writes `out` (jsonl rows of
 * {prompt, response, <attribute>...}, the world's ratings format). Returns the rows written and the
 * share of sampled responses with a garbled sentence.
 */
export async function ratePolicySamples(
  cfg: PolicyRatingsConfig,
  o: { world: World; policyDir: string; prompts: string; out: string; sampling: Sampling },
): Promise<{ rows: number; responses: number; garbledShare: number }> {
  const all = readPrompts(o.prompts);
  const prompts = Array.from({ length: cfg.responses }, (_, i) => all[i % all.length]!);
  const { model, tokenizer } = await loadModel(o.policyDir);
  let items: { prompt: string; response: string }[];
  try {
    const responses = await sampleResponses(model, tokenizer, prompts, o.sampling, new Rng(`policy-ratings-${cfg.seed}`));
    items = prompts.map((prompt, i) => ({ prompt, response: responses[i]! }));
  } finally {
    model.dispose();
  }
  const rows = rateResponses(o.world, new Rng(`policy-raters-${cfg.seed}`), items, cfg.ratersPerResponse, cfg.missingRate);
  writeFileAtomic(o.out, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
  const garbled = items.filter((it) => o.world.parseResponse(it.response).some((m) => m.id === 'garbled')).length;
  return { rows: rows.length, responses: items.length, garbledShare: items.length ? garbled / items.length : 0 };
}

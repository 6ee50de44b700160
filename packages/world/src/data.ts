/**
 * The world's datasets, written in the formats of real data so the pipeline reads them with the
 * same code: HH-RLHF `{chosen, rejected}` dialogues, attribute ratings (one rater per row),
 * preference pairs `{prompt, chosen, rejected}`, prompt lists, a pretraining corpus and a
 * tokenizer.json (+ tokenizer_config.json).
 */
import { join } from 'node:path';
import { QrlhfError, Rng, defineConfig, parseConfig, seedField, writeFileAtomic, type ConfigOf } from '@qrlhf/core';
import { ATTRIBUTES, type Attribute, type BehaviourPolicy } from './spec.js';
import { ASSISTANT_TAG, HUMAN_TAG } from './text.js';
import type { World } from './world.js';

/**
 * The data stage: the world's seed and the size of each dataset (one line per knob; an experiment's
 * `world` block is a partial of this).
 */
export const WORLD_DATA_SCHEMA = defineConfig({
  seed: seedField('seed of the synthetic world (createWorld) and so of every dataset drawn from it'),
  pretrain: { type: 'int', default: 20000, min: 0, doc: 'dialogues of the pretraining corpus' },
  sft: { type: 'int', default: 4000, min: 0, doc: 'SFT dialogues, HH-RLHF {chosen, rejected}' },
  ratings: { type: 'int', default: 3000, min: 0, doc: 'rated (prompt, response) items; each gets ratersPerResponse rows' },
  ratersPerResponse: { type: 'int', default: 3, min: 0, doc: 'raters per rated item, so alike responses get conflicting labels' },
  missingRate: { type: 'number', default: 0.05, min: 0, max: 1, doc: 'probability that one attribute label of a rating row is missing (null)' },
  pairs: { type: 'int', default: 4000, min: 0, doc: 'preference pairs for the gate' },
  prompts: { type: 'int', default: 2000, min: 0, doc: 'RL training prompts' },
  evalPrompts: { type: 'int', default: 200, min: 0, doc: 'held-out evaluation prompts, disjoint from the RL prompts (promptBucket)' },
  evalShare: {
    type: 'number', default: 0.25, min: 0.01, max: 0.99,
    doc: 'share of the final questions reserved for evaluation: evalPrompts are drawn only from them, prompts only from the rest',
  },
});
export type WorldDataConfig = ConfigOf<typeof WORLD_DATA_SCHEMA>;
/** What writeWorldData takes: any subset of WORLD_DATA_SCHEMA (the rest at its defaults; a seed must be the world's). */
export type WorldDataSizes = Partial<WorldDataConfig>;

export interface WorldFiles {
  dir: string;
  pretrain: string;
  sft: string;
  ratings: string;
  pairs: string;
  prompts: string;
  evalPrompts: string;
  tokenizer: string;
  tokenizerConfig: string;
  /** world.json: the seed, the params and the sizes the files were drawn with */
  manifest: string;
}

export interface RatingRow {
  prompt: string;
  response: string;
  helpfulness: number | null;
  harmlessness: number | null;
  verbosity: number | null;
}

function jsonl(rows: unknown[]): string {
  return rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : '');
}

/** How the ratings' and pairs' responses are written: the behaviour policy with ratedBehaviour's changes, garbled sentences at its garbleRate. */
function ratedPolicy(world: World): Partial<BehaviourPolicy> {
  return { ...world.params.ratedBehaviour, garbleRate: world.params.behaviour.garbleRate };
}

/** Two different responses to one prompt; the first is the one `rater` scores higher. */
function preferencePair(world: World, rng: Rng, prompt: string, policy: Partial<BehaviourPolicy>): { chosen: string; rejected: string } {
  let a = world.sampleResponse(prompt, rng, policy);
  let b = world.sampleResponse(prompt, rng, policy);
  for (let tries = 0; a === b && tries < 20; tries++) b = world.sampleResponse(prompt, rng, policy);
  // one rater judges both; their leniency is drawn afresh for each response
  const rater = world.sampleRater(rng);
  const ra = world.raterReward(prompt, a, rater);
  const rb = world.raterReward(prompt, b, { type: rater.type, e: 2 * rng.next() - 1 });
  if (rb > ra) [a, b] = [b, a];
  return { chosen: a, rejected: b };
}

export function sampleRatingRows(world: World, rng: Rng, items: number, ratersPerResponse: number, missingRate: number): RatingRow[] {
  const rows: RatingRow[] = [];
  const policy = ratedPolicy(world);
  for (let i = 0; i < items; i++) {
    const prompt = world.samplePrompt(rng);
    const response = world.sampleResponse(prompt, rng, policy);
    rows.push(...rateOne(world, rng, prompt, response, ratersPerResponse, missingRate));
  }
  return rows;
}

/**
 * Rating rows for given (prompt, response) items, as the world's ratings are made: `ratersPerResponse`
 * raters drawn from the population per item, each label missing with probability `missingRate`.
 * For responses the world did not write itself, e.g. a policy's own samples (on-policy ratings).
 */
export function rateResponses(
  world: World,
  rng: Rng,
  items: readonly { prompt: string; response: string }[],
  ratersPerResponse: number,
  missingRate: number,
): RatingRow[] {
  return items.flatMap((it) => rateOne(world, rng, it.prompt, it.response, ratersPerResponse, missingRate));
}

function rateOne(world: World, rng: Rng, prompt: string, response: string, raters: number, missingRate: number): RatingRow[] {
  const rows: RatingRow[] = [];
  for (let j = 0; j < raters; j++) {
    const r = world.rate(prompt, response, world.sampleRater(rng));
    const row = { prompt, response } as RatingRow;
    for (const a of ATTRIBUTES) row[a as Attribute] = rng.next() < missingRate ? null : Math.round(r[a] * 1e6) / 1e6;
    rows.push(row);
  }
  return rows;
}

export function samplePreferencePairs(world: World, rng: Rng, n: number): { prompt: string; chosen: string; rejected: string }[] {
  const out: { prompt: string; chosen: string; rejected: string }[] = [];
  const policy = ratedPolicy(world);
  for (let i = 0; i < n; i++) {
    const prompt = world.samplePrompt(rng);
    out.push({ prompt, ...preferencePair(world, rng, prompt, policy) });
  }
  return out;
}

/** SFT dialogues: the rater-preferred of two behaviour responses is `chosen` (no garbled text). */
export function sampleSftDialogues(world: World, rng: Rng, n: number): { chosen: string; rejected: string }[] {
  const out: { chosen: string; rejected: string }[] = [];
  for (let i = 0; i < n; i++) {
    const prompt = world.samplePrompt(rng);
    const p = preferencePair(world, rng, prompt, { garbleRate: 0 });
    out.push({ chosen: prompt + p.chosen, rejected: prompt + p.rejected });
  }
  return out;
}

/**
 * Which side of the RL / evaluation split a prompt is on: 'eval' or 'rl'. The key is the prompt's
 * last human turn (the question the response answers: template, verb and object, or the follow-up
 * of a two-turn prompt), so two prompts that end on the same question are always on the same side
 * and no evaluation prompt is ever an RL prompt. The side is a uniform draw seeded by the world's
 * seed and that key: u < evalShare → 'eval'. A function of (world seed, evalShare, prompt) only,
 * never of the dataset sizes.
 */
export function promptBucket(worldSeed: number, evalShare: number, prompt: string): 'eval' | 'rl' {
  const h = prompt.lastIndexOf(HUMAN_TAG);
  const a = prompt.lastIndexOf(ASSISTANT_TAG);
  const question = h >= 0 && a > h ? prompt.slice(h + HUMAN_TAG.length, a).trim() : prompt;
  return new Rng(`${worldSeed}:prompt-split:${question}`).next() < evalShare ? 'eval' : 'rl';
}

/** `n` prompts from the world's prompt distribution restricted to one side of the split (rejection sampling). */
export function samplePromptsIn(world: World, rng: Rng, n: number, side: 'eval' | 'rl', evalShare: number): { prompt: string }[] {
  const out: { prompt: string }[] = [];
  const sideOf = new Map<string, 'eval' | 'rl'>();
  let tries = 0;
  while (out.length < n) {
    if (++tries > 1000 * (n + 10)) throw new QrlhfError(`writeWorldData: found no ${side} prompts (evalShare ${evalShare})`);
    const prompt = world.samplePrompt(rng);
    let b = sideOf.get(prompt);
    if (b === undefined) sideOf.set(prompt, (b = promptBucket(world.seed, evalShare, prompt)));
    if (b === side) out.push({ prompt });
  }
  return out;
}

/** Writes every dataset of the world into `dir` (each file atomically). Deterministic in world.seed. */
export async function writeWorldData(world: World, dir: string, sizes: WorldDataSizes = {}): Promise<WorldFiles> {
  const { seed, ...z } = parseConfig(WORLD_DATA_SCHEMA, sizes, 'writeWorldData: sizes');
  if (sizes.seed !== undefined && seed !== world.seed) throw new QrlhfError(`writeWorldData: sizes.seed ${seed} is not the world's seed ${world.seed}`);
  // one stream per file, so the size of one file never changes the content of another
  const root = new Rng(`${world.seed}:world-data`);
  const streams = {
    pretrain: root.fork('pretrain'),
    sft: root.fork('sft'),
    ratings: root.fork('ratings'),
    pairs: root.fork('pairs'),
    prompts: root.fork('prompts'),
    evalPrompts: root.fork('eval-prompts'),
  };
  const files: WorldFiles = {
    dir,
    pretrain: join(dir, 'pretrain.jsonl'),
    sft: join(dir, 'sft.jsonl'),
    ratings: join(dir, 'ratings.jsonl'),
    pairs: join(dir, 'pairs.jsonl'),
    prompts: join(dir, 'prompts.jsonl'),
    evalPrompts: join(dir, 'eval_prompts.jsonl'),
    tokenizer: join(dir, 'tokenizer.json'),
    tokenizerConfig: join(dir, 'tokenizer_config.json'),
    manifest: join(dir, 'world.json'),
  };

  const pre: { text: string }[] = [];
  for (let i = 0; i < z.pretrain; i++) {
    const p = world.samplePrompt(streams.pretrain);
    pre.push({ text: p + world.sampleResponse(p, streams.pretrain) });
  }
  writeFileAtomic(files.pretrain, jsonl(pre));
  writeFileAtomic(files.sft, jsonl(sampleSftDialogues(world, streams.sft, z.sft)));
  writeFileAtomic(files.ratings, jsonl(sampleRatingRows(world, streams.ratings, z.ratings, z.ratersPerResponse, z.missingRate)));
  writeFileAtomic(files.pairs, jsonl(samplePreferencePairs(world, streams.pairs, z.pairs)));
  // RL and evaluation prompts from the two sides of one split (promptBucket): disjoint by construction
  writeFileAtomic(files.prompts, jsonl(samplePromptsIn(world, streams.prompts, z.prompts, 'rl', z.evalShare)));
  writeFileAtomic(files.evalPrompts, jsonl(samplePromptsIn(world, streams.evalPrompts, z.evalPrompts, 'eval', z.evalShare)));
  writeFileAtomic(files.tokenizer, JSON.stringify(world.tokenizerJson()));
  writeFileAtomic(files.tokenizerConfig, JSON.stringify(world.tokenizerConfigJson(), null, 2) + '\n');
  writeFileAtomic(
    files.manifest,
    JSON.stringify({ seed: world.seed, sizes: z, attributes: world.attributes, rewardWeights: world.rewardWeights, params: world.params }, null, 2) + '\n',
  );
  return files;
}

/**
 * The synthetic world of SPEC §8: prompts, responses made of moves, and a population of raters
 * whose attribute scores of any (prompt, response) follow a known finite mixture, so the true
 * quantiles of every attribute and of the reward are computable exactly.
 */
import { QrlhfError, Rng } from '@qrlhf/core';
import {
  ATTRIBUTES,
  DEFAULT_PARAMS,
  FOLLOW_UPS,
  MOVE_IDS,
  MOVE_TEMPLATES,
  QUESTIONS,
  TOPICAL_MOVES,
  TOPICS,
  type Attribute,
  type BehaviourPolicy,
  type Contribution,
  type ContributionKey,
  type MoveId,
  type RaterType,
  type WorldParams,
} from './spec.js';
import {
  ALL_OBJECTS,
  ASSISTANT_TAG,
  HUMAN_TAG,
  askedObject,
  garbledSentence,
  parseResponse,
  pick,
  pickWeighted,
  renderMove,
  worldWords,
  type ParsedMove,
} from './text.js';
import { mixtureMean, mixtureQuantile, mixtureQuantiles, type UniformMixture } from './mixture.js';
import { buildWorldTokenizer, worldTokenizerConfig, type TokenizerJson } from './bpe.js';

export interface Move {
  id: MoveId;
  templates: string[];
  /** default per-attribute contribution (rater types add their deltas) */
  contribution: Contribution;
}

/** One member of the rater population: a type and a leniency e in [-1, 1]. */
export interface Rater {
  type: number;
  /** the uniform leniency draw; a rating is mu + noise * e on every attribute */
  e: number;
}

export type Ratings = Record<Attribute, number>;

/** The exact law of a response's ratings and reward. */
export interface TrueDistribution {
  /** per rater type, the mean score of each attribute (after the clamp) */
  means: Ratings[];
  attributes: Record<Attribute, UniformMixture>;
  /** the reward of one rater, sum_m w_m a_m: a mixture of uniforms too (the leniency is shared) */
  reward: UniformMixture;
}

export interface TrueQuantiles {
  /** quantiles of the reward of a random rater (the world's reward, see README) */
  reward: Float32Array;
  /** equation (3) of the paper applied to the true attribute laws: sum_m w_m Q_m(tau) */
  rewardEq3: Float32Array;
  attributes: Record<Attribute, Float32Array>;
}

/** Overrides of the behaviour policy for one draw. */
export type ResponsePolicy = Partial<BehaviourPolicy>;

export interface World {
  readonly seed: number;
  readonly params: WorldParams;
  readonly moves: Move[];
  readonly attributes: Attribute[];
  readonly raterTypes: RaterType[];
  readonly rewardWeights: Record<Attribute, number>;

  samplePrompt(rng: Rng): string;
  sampleResponse(prompt: string, rng: Rng, policy?: ResponsePolicy): string;
  /** a response made of exactly these moves, each naming the object asked about */
  renderResponse(prompt: string, moves: MoveId[], rng: Rng): string;
  parseResponse(response: string): ParsedMove[];
  askedObject(prompt: string): string | null;

  sampleRater(rng: Rng): Rater;
  rate(prompt: string, response: string, rater: Rater): Ratings;
  raterReward(prompt: string, response: string, rater: Rater): number;

  trueDistribution(prompt: string, response: string): TrueDistribution;
  trueQuantiles(prompt: string, response: string, taus: Float32Array): TrueQuantiles;
  /** E[reward] = sum_m w_m E[a_m] (the same for the rater reward and for equation (3)) */
  trueExpectation(prompt: string, response: string): number;

  tokenizerJson(): TokenizerJson;
  tokenizerConfigJson(): Record<string, unknown>;
  /** every word the world's text may contain */
  words(): string[];
}

export interface WorldOptions {
  params?: Partial<WorldParams>;
}

const clamp01 = (x: number) => Math.min(1, Math.max(0, x));

function validateParams(p: WorldParams): void {
  let total = 0;
  for (const t of p.raterTypes) {
    if (!(t.probability >= 0)) throw new QrlhfError(`world params: raterTypes "${t.name}".probability must be >= 0, got ${t.probability}`);
    total += t.probability;
  }
  if (Math.abs(total - 1) > 1e-9) throw new QrlhfError(`world params: raterTypes probabilities must sum to 1, got ${total}`);
  let wsum = 0;
  for (const a of ATTRIBUTES) {
    const w = p.rewardWeights[a];
    if (!(w >= 0)) throw new QrlhfError(`world params: rewardWeights.${a} must be >= 0, got ${w}`);
    wsum += w;
  }
  if (Math.abs(wsum - 1) > 1e-9) throw new QrlhfError(`world params: rewardWeights must sum to 1, got ${wsum}`);
  if (!(p.noise >= 0 && p.noise < 0.5)) throw new QrlhfError(`world params: noise must be in [0, 0.5), got ${p.noise}`);
  if (!(p.vocabSize >= 300)) throw new QrlhfError(`world params: vocabSize must be >= 300 (bytes + specials + merges), got ${p.vocabSize}`);
}

/** The world: a deterministic function of `seed` (it fixes every random draw the world makes itself). */
export function createWorld(seed: number, opts: WorldOptions = {}): World {
  const params: WorldParams = { ...DEFAULT_PARAMS, ...(opts.params ?? {}) };
  validateParams(params);
  const s = params.noise;
  const W = params.rewardWeights;
  const wsum = ATTRIBUTES.reduce((acc, a) => acc + W[a], 0);
  const words = worldWords();
  let tokenizer: TokenizerJson | null = null;

  const contribution = (type: RaterType, key: ContributionKey, a: Attribute): number =>
    (params.contributions[key]?.[a] ?? 0) + (type.deltas[key]?.[a] ?? 0);

  // rating a response many times (Monte Carlo, datasets) parses it once
  const meansCache = new Map<string, Ratings[]>();
  function typeMeans(prompt: string, response: string): Ratings[] {
    const key = prompt + '\u0000' + response;
    let v = meansCache.get(key);
    if (!v) {
      if (meansCache.size >= 4096) meansCache.clear();
      v = computeTypeMeans(prompt, response);
      meansCache.set(key, v);
    }
    return v;
  }

  /** per type, the mean of each attribute */
  function computeTypeMeans(prompt: string, response: string): Ratings[] {
    const asked = askedObject(prompt);
    const moves = parseResponse(response);
    // the keys that contribute, in order: a move counts once (a second one is a repeat), an
    // off-topic answer or detail once per move; a garbled sentence counts each time it occurs
    const keys: ContributionKey[] = [];
    const seen = new Set<string>();
    for (const m of moves) {
      if (m.id === 'garbled') { keys.push('garbled'); continue; }
      if (TOPICAL_MOVES.has(m.id) && asked !== null && m.object !== asked) {
        // about another object: half the value, once per move (a second one is a repeat, so a
        // policy cannot pile up answers about other objects for reward)
        const k = `offTopic:${m.id}`;
        keys.push(seen.has(k) ? 'repeat' : 'offTopic');
        seen.add(k);
        continue;
      }
      if (seen.has(m.id)) { keys.push('repeat'); continue; }
      seen.add(m.id);
      keys.push(m.id);
    }
    for (let i = params.usefulMoves; i < moves.length; i++) keys.push('long');
    if (moves.length === 0) keys.push('empty');
    return params.raterTypes.map((type) => {
      const r = {} as Ratings;
      for (const a of ATTRIBUTES) {
        let score = params.base[a];
        for (const k of keys) score += contribution(type, k, a);
        r[a] = s + (1 - 2 * s) * clamp01(score);
      }
      return r;
    });
  }

  function trueDistribution(prompt: string, response: string): TrueDistribution {
    const means = typeMeans(prompt, response).map((m) => ({ ...m }));
    const attributes = {} as Record<Attribute, UniformMixture>;
    for (const a of ATTRIBUTES) {
      attributes[a] = params.raterTypes.map((t, i) => ({ weight: t.probability, lo: means[i]![a] - s, hi: means[i]![a] + s }));
    }
    const reward: UniformMixture = params.raterTypes.map((t, i) => {
      let mu = 0;
      for (const a of ATTRIBUTES) mu += W[a] * means[i]![a];
      return { weight: t.probability, lo: mu - s * wsum, hi: mu + s * wsum };
    });
    return { means, attributes, reward };
  }

  function samplePrompt(rng: Rng): string {
    const topic = pick(rng, TOPICS);
    const obj = pick(rng, topic.objects);
    const verb = pick(rng, topic.verbs);
    const q = pick(rng, QUESTIONS).replace('{verb}', verb).replace('{obj}', obj);
    if (rng.next() < params.twoTurnRate) {
      const obj0 = pick(rng, topic.objects);
      const verb0 = pick(rng, topic.verbs);
      const q0 = pick(rng, QUESTIONS).replace('{verb}', verb0).replace('{obj}', obj0);
      const a0 = renderMove(rng, 'answer', obj0, verb0);
      const q1 = pick(rng, FOLLOW_UPS).replace('{verb}', verb).replace('{obj}', obj);
      return `${HUMAN_TAG} ${q0}${ASSISTANT_TAG} ${a0}${HUMAN_TAG} ${q1}${ASSISTANT_TAG}`;
    }
    return `${HUMAN_TAG} ${q}${ASSISTANT_TAG}`;
  }

  function topicOf(obj: string | null) {
    return TOPICS.find((t) => obj !== null && t.objects.includes(obj)) ?? null;
  }

  function renderResponse(prompt: string, moves: MoveId[], rng: Rng): string {
    const asked = askedObject(prompt);
    const topic = topicOf(asked) ?? pick(rng, TOPICS);
    const obj = asked ?? pick(rng, topic.objects);
    return moves.map((m) => ' ' + renderMove(rng, m, obj, pick(rng, topic.verbs))).join('');
  }

  function sampleResponse(prompt: string, rng: Rng, policy: ResponsePolicy = {}): string {
    const pol: BehaviourPolicy = { ...params.behaviour, garbleRate: 0, ...policy };
    const asked = askedObject(prompt);
    const topic = topicOf(asked) ?? pick(rng, TOPICS);
    const obj = asked ?? pick(rng, topic.objects);
    let u = rng.next() * pol.lengths.reduce((a, b) => a + b, 0);
    let nMoves = pol.lengths.length;
    for (let i = 0; i < pol.lengths.length; i++) {
      u -= pol.lengths[i]!;
      if (u < 0) { nMoves = i + 1; break; }
    }
    let out = '';
    for (let i = 0; i < nMoves; i++) {
      if (rng.next() < pol.garbleRate) { out += ' ' + garbledSentence(rng, words, obj, pick(rng, topic.verbs)); continue; }
      const move = pickWeighted<MoveId>(rng, i === 0 ? pol.first : pol.next);
      let o = obj;
      if (TOPICAL_MOVES.has(move) && rng.next() < pol.offTopicRate) {
        const others = ALL_OBJECTS.filter((x) => x !== obj);
        o = pick(rng, others);
      }
      out += ' ' + renderMove(rng, move, o, pick(rng, topic.verbs));
    }
    return out;
  }

  function sampleRater(rng: Rng): Rater {
    const u = rng.next();
    let acc = 0;
    let type = params.raterTypes.length - 1;
    for (let i = 0; i < params.raterTypes.length; i++) {
      acc += params.raterTypes[i]!.probability;
      if (u < acc) { type = i; break; }
    }
    return { type, e: 2 * rng.next() - 1 };
  }

  function rate(prompt: string, response: string, rater: Rater): Ratings {
    const mu = typeMeans(prompt, response)[rater.type];
    if (!mu) throw new QrlhfError(`world: rater type ${rater.type} out of range (0..${params.raterTypes.length - 1})`);
    const r = {} as Ratings;
    for (const a of ATTRIBUTES) r[a] = mu[a] + s * rater.e;
    return r;
  }

  function raterReward(prompt: string, response: string, rater: Rater): number {
    const r = rate(prompt, response, rater);
    let v = 0;
    for (const a of ATTRIBUTES) v += W[a] * r[a];
    return v;
  }

  function trueQuantiles(prompt: string, response: string, taus: Float32Array): TrueQuantiles {
    const d = trueDistribution(prompt, response);
    const attributes = {} as Record<Attribute, Float32Array>;
    const eq3 = new Float64Array(taus.length);
    for (const a of ATTRIBUTES) {
      attributes[a] = mixtureQuantiles(d.attributes[a], taus);
      if (W[a] === 0) continue;
      for (let k = 0; k < taus.length; k++) eq3[k] += W[a] * mixtureQuantile(d.attributes[a], taus[k]!);
    }
    return { reward: mixtureQuantiles(d.reward, taus), rewardEq3: Float32Array.from(eq3), attributes };
  }

  function trueExpectation(prompt: string, response: string): number {
    return mixtureMean(trueDistribution(prompt, response).reward);
  }

  return {
    seed,
    params,
    moves: MOVE_IDS.map((id) => ({ id, templates: [...MOVE_TEMPLATES[id]], contribution: { ...params.contributions[id] } })),
    attributes: [...ATTRIBUTES],
    raterTypes: params.raterTypes,
    rewardWeights: W,
    samplePrompt,
    sampleResponse,
    renderResponse,
    parseResponse,
    askedObject,
    sampleRater,
    rate,
    raterReward,
    trueDistribution,
    trueQuantiles,
    trueExpectation,
    tokenizerJson() {
      // The tokenizer does not depend on the seed (one tokenizer for every world of these
      // params): its training corpus is drawn from a fixed stream.
      tokenizer ??= buildWorldTokenizer(
        (rng) => {
          const p = samplePrompt(rng);
          return p + sampleResponse(p, rng);
        },
        words,
        new Rng('qrlhf-world-tokenizer'),
        params.vocabSize,
      );
      return tokenizer;
    },
    tokenizerConfigJson() {
      return worldTokenizerConfig();
    },
    words: () => [...words],
  };
}

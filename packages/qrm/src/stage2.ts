/**
 * Stage 2 end to end, from cached features to a QuantileRewardModel: the heads' attribute
 * quantiles on both sides of every preference pair, ArmoRM's verbosity penalties from a reference
 * set (default: the pairs' own responses, chosen and rejected, as ArmoRM does), the debiased
 * quantiles, a held-out split, and the gate trained on the rest.
 */
import { QrlhfError, Rng } from '@qrlhf/core';
import { predictAttributeQuantiles, type QuantileHeads } from './quantile/index.js';
import { applyDebias, debiasPenalties, expectedRewards, type DebiasResult } from './debias.js';
import { GateNetwork, trainGate, type GatePairs, type GateProgress, type GateTrainResult, type MixtureMode } from './gate.js';
import { splitSides, type FeaturePooling, type PairFeatures } from './features.js';
import { QuantileRewardModel } from './model.js';
import type { FeatureProvenance } from './provenance.js';

export interface TrainQrmOptions {
  heads: QuantileHeads;
  /** Stage-2 features of the preference pairs the gate learns from. */
  pairs: PairFeatures;
  /** Stage-2 features whose responses set the verbosity penalties (default: `pairs`). */
  reference?: PairFeatures;
  /** The verbosity attribute; null: no debiasing; undefined: an attribute named "verbosity" (or ending in it) if any. */
  verbosity?: string | null;
  hiddenSize?: number;
  numHidden?: number;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  weightDecay?: number;
  warmupSteps?: number;
  /** Share of the pairs held out to measure accuracy (0.1; 0 = none). */
  valFraction?: number;
  seed?: number;
  backbone?: string | null;
  /** A tokenizer for the backbone, when not its own (recorded in qrm.json). */
  tokenizer?: string | null;
  mixture?: MixtureMode;
  /** The response-feature pooling the features were extracted with (recorded in qrm.json). */
  pooling?: FeaturePooling;
  /** The dialogue format the features were extracted with: 'auto' | 'hh' | a template PATH (recorded in qrm.json). */
  chatTemplate?: string;
  /** The truncation length of the features (recorded in qrm.json; null: the backbone's context). */
  maxTokens?: number | null;
  /** How the features were made (provenance.ts; recorded in qrm.json; undefined: not recorded). */
  features?: FeatureProvenance | null;
  onProgress?: (m: GateProgress) => void;
}

export interface TrainQrmResult {
  model: QuantileRewardModel;
  training: GateTrainResult;
  debias: DebiasResult & { verbosity: string | null };
  nTrain: number;
  nVal: number;
}

/** The attribute treated as verbosity when none is named: "verbosity", else one ending in "verbosity". */
export function guessVerbosity(attributes: readonly string[]): string | null {
  if (attributes.includes('verbosity')) return 'verbosity';
  return attributes.find((a) => /verbosity$/i.test(a)) ?? null;
}

function subsetRows(x: Float32Array, width: number, idx: number[]): Float32Array {
  const out = new Float32Array(idx.length * width);
  idx.forEach((r, i) => out.set(x.subarray(r * width, (r + 1) * width), i * width));
  return out;
}

export async function trainQrm(o: TrainQrmOptions): Promise<TrainQrmResult> {
  const { heads, pairs } = o;
  const M = heads.attributes.length;
  const K = heads.taus.length;
  const d = heads.d;
  if (pairs.d !== d) throw new QrlhfError(`pair features have d = ${pairs.d}, the heads expect ${d} (features from another backbone?)`);
  const n = pairs.n;
  if (n < 2) throw new QrlhfError(`need at least 2 preference pairs, got ${n}`);
  const verbosity = o.verbosity === undefined ? guessVerbosity(heads.attributes) : o.verbosity;
  if (verbosity !== null && !heads.attributes.includes(verbosity)) {
    throw new QrlhfError(`verbosity attribute "${verbosity}" is not one of the heads' attributes (${heads.attributes.join(', ')})`);
  }
  const vIdx = verbosity === null ? -1 : heads.attributes.indexOf(verbosity);

  // Penalties from the reference responses (both sides).
  let debias: DebiasResult = { penalties: new Array<number>(M).fill(0), correlations: new Array<number>(M).fill(0) };
  if (vIdx >= 0) {
    const ref = o.reference ?? pairs;
    if (ref.d !== d) throw new QrlhfError(`reference features have d = ${ref.d}, the heads expect ${d}`);
    const q = await predictAttributeQuantiles(heads, ref.embeddings, 2 * ref.n); // [n, 2, d] read as [2n, d]
    debias = debiasPenalties(expectedRewards(q, 2 * ref.n, M, K), 2 * ref.n, M, vIdx);
  }

  const [embC, embR] = splitSides(pairs.embeddings, n, d);
  const [promptC, promptR] = splitSides(pairs.prompt_embeddings, n, d);
  const qC = applyDebias(await predictAttributeQuantiles(heads, embC, n), n, M, K, debias.penalties, vIdx);
  const qR = applyDebias(await predictAttributeQuantiles(heads, embR, n), n, M, K, debias.penalties, vIdx);

  const rng = new Rng(o.seed ?? 0);
  const valFraction = o.valFraction ?? 0.1;
  if (!(valFraction >= 0 && valFraction < 1)) throw new QrlhfError(`validation fraction must be in [0, 1), got ${valFraction}`);
  const order = rng.fork('split').shuffle(Array.from({ length: n }, (_, i) => i));
  const nVal = Math.min(n - 1, Math.round(valFraction * n));
  const valIdx = order.slice(0, nVal).sort((a, b) => a - b);
  const trIdx = order.slice(nVal).sort((a, b) => a - b);
  const part = (idx: number[]): GatePairs => ({
    n: idx.length, d, M, K,
    promptChosen: subsetRows(promptC, d, idx),
    promptRejected: subsetRows(promptR, d, idx),
    quantilesChosen: subsetRows(qC, M * K, idx),
    quantilesRejected: subsetRows(qR, M * K, idx),
  });

  const gate = GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: o.hiddenSize, numHidden: o.numHidden }, rng.fork('gate-init'));
  let training: GateTrainResult;
  try {
    training = await trainGate(gate, part(trIdx), {
      epochs: o.epochs,
      batchSize: o.batchSize,
      lr: o.lr,
      weightDecay: o.weightDecay,
      warmupSteps: o.warmupSteps,
      rng: rng.fork('shuffle'),
      validation: nVal > 0 ? part(valIdx) : undefined,
      onProgress: o.onProgress,
    });
  } catch (e) {
    gate.dispose();
    throw e;
  }
  const model = new QuantileRewardModel({
    heads,
    gate,
    verbosity,
    debiasPenalties: debias.penalties,
    backbone: o.backbone ?? null,
    tokenizer: o.tokenizer ?? null,
    mixture: o.mixture ?? 'eq3',
    pooling: o.pooling ?? 'last',
    chatTemplate: o.chatTemplate ?? 'auto',
    maxTokens: o.maxTokens ?? null,
    features: o.features,
  });
  return { model, training, debias: { ...debias, verbosity }, nTrain: trIdx.length, nVal };
}

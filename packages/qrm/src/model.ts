/**
 * The quantile reward model as one object and one folder:
 *   heads.safetensors  `weight` [M, K, d] f32, `bias` [M, K] f32, `taus` [K] f32 (the stage-1
 *                      heads; attribute names and label scaling in the metadata)
 *   gate.safetensors   the gating MLP (Linear weights [out, in], `beta` [1])
 *   qrm.json           taus, attributes, verbosity attribute and debias penalties, label scaling,
 *                      the backbone reference, the gate's shape and its scale beta, the mixing rule,
 *                      and `features`: how the features it was trained on were made (provenance.ts),
 *                      checked against the backbone, tokenizer and chat template scoring uses
 * Scoring: attribute quantiles from the heads on the response feature, verbosity debiasing, gate
 * weights from the prompt feature, mixing (eq. 3 by default), and optionally a normalisation.
 *
 * Normalisation ('kept-weight', a scoring option): the mixed quantiles divided by the gate weight
 * on the attributes that still carry reward after debiasing, g_kept = Σ_{m kept} g_m, where an
 * attribute is kept unless its debiased quantiles Q'_m(tau_k) = Q_m(tau_k) − p_m Q_v(tau_k) are
 * identically 0 for that response (ArmoRM's rule zeroes the verbosity attribute itself, p_v = 1;
 * an attribute that never met the Spearman threshold also has p_m = 1 but keeps Q_m − Q_v ≠ 0, so
 * it is kept). The Bradley-Terry loss leaves the scale beta free and weight on a zeroed attribute
 * shrinks the reward; dividing both out makes the reward a convex mix of attribute quantiles on the
 * labels' scale, so a utility's lambda means the same for every QRM. 'none' (default): eq. 3 as is.
 */
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { QrlhfError, dialogueFormatFor, firstNonFinite, loadModel, readSafetensors, requireFinite, writeFileAtomic, writeSafetensors, type DialogueFormat } from '@qrlhf/core';
import { predictAttributeQuantiles, type QuantileHeads } from './quantile/index.js';
import { applyDebias } from './debias.js';
import { GateNetwork, mixQuantiles, type GateConfig, type MixtureMode } from './gate.js';
import { isReleasedQrmFolder, loadRewardBackbone } from './released.js';
import { FEATURE_POOLINGS, encodedFeatures, findGatePosition, pairFeatures, type Backbone, type FeaturePooling, type PromptResponseItem } from './features.js';
import { backboneFingerprint, checkProvenanceShape, formatFingerprint, parseProvenance, requireSameProvenance, tokenizerFingerprint, warnUnrecorded, type FeatureProvenance } from './provenance.js';

/** How the mixed quantiles are scaled (see the file header). */
export type QrmNormalise = 'none' | 'kept-weight';
export const QRM_NORMALISE: readonly QrmNormalise[] = ['none', 'kept-weight'];

/**
 * The gate weight on the attributes kept after debiasing: Σ_m g_m over the m whose M·K-row
 * `attrQ` block [M, K] is not identically 0 (one response).
 */
export function keptGateWeight(attrQ: ArrayLike<number>, gate: ArrayLike<number>, M: number, K: number): number {
  let w = 0;
  for (let m = 0; m < M; m++) {
    let zero = true;
    for (let k = 0; k < K && zero; k++) zero = attrQ[m * K + k] === 0;
    if (!zero) w += gate[m]!;
  }
  return w;
}

export interface QrmScore {
  /** K mixed reward quantiles, non-decreasing. */
  quantiles: Float32Array;
  /** mean_k of `quantiles`. */
  expectation: number;
  /** Gate weights g (M values, summing to beta). */
  gate: Float32Array;
  /** [M, K] the debiased attribute quantiles that were mixed (quantiles = Σ_m gate_m · these, eq. 3). */
  attributeQuantiles: Float32Array;
}

export interface LabelScale {
  min: number;
  max: number;
}

/** Per-attribute min/max that mapped the raw labels onto [0, 1] before fitting. */
export type LabelScaling = Record<string, LabelScale>;

export interface QrmJson {
  format: 'qrlhf-qrm/1';
  taus: number[];
  attributes: string[];
  /** The verbosity attribute (null: no debiasing). */
  verbosity: string | null;
  /** p_j per attribute (ArmoRM's rule); all 0 when verbosity is null. */
  debiasPenalties: number[];
  /** Informational copy of the heads' label scaling (heads.safetensors metadata is what is read back). */
  labelScaling: LabelScaling | null;
  /** The frozen backbone the features come from: a model folder or llama2.c file (relative to qrm.json's folder, or absolute). */
  backbone: string | null;
  /** A tokenizer to use instead of the backbone's own (optional). */
  tokenizer?: string | null;
  /** Longest token sequence fed to the backbone (default: its maxPositionEmbeddings). */
  maxTokens?: number | null;
  /** How the response feature is pooled (absent = 'last', SPEC §4). */
  pooling?: FeaturePooling;
  /**
   * Token ids whose last occurrence marks the prompt feature (the released QRM layout: the
   * end-of-user-turn + assistant-header tokens); absent/null: the prompt's last token.
   */
  gatePattern?: number[] | null;
  /**
   * Sort each attribute's quantiles before mixing (absent = true, qrlhf's rule). false: keep them
   * in level order, as the released QRM's code does (its imports set it).
   */
  rearrange?: boolean;
  /** How (prompt, response) is written for the backbone: 'auto' | 'hh' | a template PATH (absent = 'auto'). */
  chatTemplate?: string;
  /** Scaling of the mixed quantiles when scoring (absent = 'none'; see the file header). */
  normalise?: QrmNormalise;
  gate: GateConfig;
  mixture: MixtureMode;
  /** The gate's scale beta (informational: gate.safetensors holds it); the gate weights of a prompt sum to it. */
  beta?: number;
  /**
   * How the features the heads and the gate were trained on were made (provenance.ts). Absent: a
   * QRM written before it was recorded (one warning when loaded); null: none by design (imported).
   */
  features?: FeatureProvenance | null;
}

/** The gate and the debiasing of a QRM on a set of items (see QuantileRewardModel.gateSummary). */
export interface QrmGateSummary {
  /** The gate's scale: every gate weight vector sums to it. */
  beta: number;
  attributes: string[];
  /** Mean gate weight per attribute over the items (they sum to beta). */
  meanGate: Record<string, number>;
  /** p_j per attribute (0 everywhere without debiasing). */
  debiasPenalties: Record<string, number>;
  verbosity: string | null;
  /** Items averaged over. */
  n: number;
}

/** The mean gate weight per attribute over scores (each score's `gate` has M values). */
export function meanGateWeights(scores: readonly Pick<QrmScore, 'gate'>[], attributes: readonly string[]): Record<string, number> {
  const sum = new Float64Array(attributes.length);
  for (const s of scores) for (let m = 0; m < attributes.length; m++) sum[m] += s.gate[m]!;
  return Object.fromEntries(attributes.map((a, m) => [a, scores.length ? sum[m]! / scores.length : NaN]));
}

// ---------------------------------------------------------------------------------------------
// heads.safetensors

/** The heads' min-max label scaling by attribute name, or null when labels were used as given. */
export function headsLabelScaling(heads: QuantileHeads): LabelScaling | null {
  if (!heads.labelMin || !heads.labelMax) return null;
  const out: LabelScaling = {};
  heads.attributes.forEach((a, m) => (out[a] = { min: heads.labelMin![m]!, max: heads.labelMax![m]! }));
  return out;
}

/**
 * Writes stage-1 heads in the contract layout (atomic): tensors `weight` [M, K, d], `bias` [M, K],
 * `taus` [K], all F32; attribute names and the label scaling go in the metadata.
 */
export function saveHeads(path: string, heads: QuantileHeads): void {
  const M = heads.attributes.length;
  const K = heads.taus.length;
  const d = heads.d;
  if (heads.weight.length !== M * K * d || heads.bias.length !== M * K) {
    throw new QrlhfError(`saveHeads: weight must be [${M}, ${K}, ${d}] and bias [${M}, ${K}]`);
  }
  requireFinite(heads.weight, [M, K, d], path, 'weight');
  requireFinite(heads.bias, [M, K], path, 'bias');
  const metadata: Record<string, string> = { format: 'qrlhf-heads/1', attributes: JSON.stringify(heads.attributes) };
  if (heads.provenance) metadata['provenance'] = JSON.stringify(heads.provenance);
  if (heads.featuresFile) metadata['features_file'] = heads.featuresFile;
  const scaling = headsLabelScaling(heads);
  if (scaling) metadata['label_scaling'] = JSON.stringify(scaling);
  writeSafetensors(
    path,
    {
      weight: { dtype: 'F32', shape: [M, K, d], data: heads.weight },
      bias: { dtype: 'F32', shape: [M, K], data: heads.bias },
      taus: { dtype: 'F32', shape: [K], data: heads.taus },
    },
    metadata,
  );
}

/** Reads heads.safetensors; checks the contract's names, shapes and dtypes. */
export function loadHeads(path: string): QuantileHeads {
  if (!existsSync(path)) throw new QrlhfError(`${path}: heads file not found`);
  const { tensors, metadata } = readSafetensors(path);
  const get = (name: string, rank: number): { shape: number[]; data: Float32Array } => {
    const t = tensors[name];
    if (!t) throw new QrlhfError(`${path}: tensor "${name}" is missing (expected weight [M, K, d], bias [M, K], taus [K])`);
    if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) throw new QrlhfError(`${path}: tensor "${name}" is ${t.dtype}, expected F32`);
    if (t.shape.length !== rank) throw new QrlhfError(`${path}: tensor "${name}" has shape [${t.shape.join(', ')}], expected ${rank} dimensions`);
    requireFinite(t.data, t.shape, path, name);
    return { shape: t.shape, data: t.data };
  };
  const w = get('weight', 3);
  const b = get('bias', 2);
  const taus = get('taus', 1);
  const [M, K, d] = w.shape as [number, number, number];
  if (b.shape[0] !== M || b.shape[1] !== K) throw new QrlhfError(`${path}: bias is [${b.shape.join(', ')}], expected [${M}, ${K}]`);
  if (taus.shape[0] !== K) throw new QrlhfError(`${path}: taus has ${taus.shape[0]} levels, weight has ${K}`);
  for (let k = 0; k < K; k++) {
    const t = taus.data[k]!;
    if (!(t > 0 && t < 1) || (k > 0 && !(t > taus.data[k - 1]!))) throw new QrlhfError(`${path}: taus must increase strictly inside (0, 1), got ${Array.from(taus.data).join(', ')}`);
  }
  let attributes: string[] = Array.from({ length: M }, (_, j) => `attribute_${j}`);
  if (metadata['attributes']) {
    let a: unknown;
    try {
      a = JSON.parse(metadata['attributes']);
    } catch {
      a = null;
    }
    if (!Array.isArray(a) || a.length !== M || !a.every((x) => typeof x === 'string')) {
      throw new QrlhfError(`${path}: metadata "attributes" must be a JSON list of ${M} names`);
    }
    attributes = a as string[];
  }
  const heads: QuantileHeads = {
    weight: w.data, bias: b.data, taus: taus.data, attributes, d,
    provenance: parseProvenance(metadata, path), featuresFile: metadata['features_file'] ?? null,
  };
  if (metadata['label_scaling']) {
    let s: LabelScaling;
    try {
      s = JSON.parse(metadata['label_scaling']) as LabelScaling;
    } catch {
      throw new QrlhfError(`${path}: metadata "label_scaling" is not JSON`);
    }
    const missing = attributes.filter((a) => !s[a] || !Number.isFinite(s[a]!.min) || !Number.isFinite(s[a]!.max));
    if (missing.length) throw new QrlhfError(`${path}: metadata "label_scaling" lacks {min, max} for ${missing.join(', ')}`);
    heads.labelMin = Float32Array.from(attributes, (a) => s[a]!.min);
    heads.labelMax = Float32Array.from(attributes, (a) => s[a]!.max);
  }
  return heads;
}

// ---------------------------------------------------------------------------------------------
// The model

export interface QrmParts {
  heads: QuantileHeads;
  gate: GateNetwork;
  /** Name of the verbosity attribute, or null for no debiasing. */
  verbosity: string | null;
  debiasPenalties: number[];
  backbone?: string | null;
  tokenizer?: string | null;
  maxTokens?: number | null;
  mixture?: MixtureMode;
  /** The response-feature pooling the heads were fitted on ('last' default). */
  pooling?: FeaturePooling;
  /** Token pattern whose last occurrence is the gate's input position (null: the prompt's last token). */
  gatePattern?: number[] | null;
  /** Sort each attribute's quantiles before mixing (default true; false: the released code's rule). */
  rearrange?: boolean;
  /** How (prompt, response) is written for the backbone: 'auto' (default) | 'hh' | a template PATH. */
  chatTemplate?: string;
  /** Scaling of the mixed quantiles ('none' default; 'kept-weight': see the file header). */
  normalise?: QrmNormalise;
  /** How the training features were made (undefined: not recorded; null: none by design, e.g. imported). */
  features?: FeatureProvenance | null;
  /** Where the model was read from (names it in messages). */
  source?: string;
}

export class QuantileRewardModel {
  readonly heads: QuantileHeads;
  readonly gate: GateNetwork;
  readonly verbosity: string | null;
  readonly debiasPenalties: number[];
  /** The backbone reference as resolved (absolute when it came from a file). */
  backbonePath: string | null;
  tokenizerPath: string | null;
  readonly maxTokens: number | null;
  /** The response-feature pooling of the features the heads were fitted on. */
  readonly pooling: FeaturePooling;
  /** How the attribute distributions are mixed: eq. 3 (default) or the true mixture. */
  mixture: MixtureMode;
  /** Token pattern whose last occurrence is the gate's input position (null: the prompt's last token). */
  readonly gatePattern: number[] | null;
  /** Whether each attribute's quantiles are sorted before mixing (false for imported released QRMs). */
  readonly rearrange: boolean;
  /** How (prompt, response) is written for the backbone: 'auto' (its template, else HH) | 'hh' | a template PATH. */
  readonly chatTemplate: string;
  /** Scaling of the mixed quantiles: 'none' (eq. 3 as is) or 'kept-weight' (see the file header); settable. */
  normalise: QrmNormalise;
  /** How the features the QRM was trained on were made (null: not recorded; see provenance.ts). */
  readonly features: FeatureProvenance | null;
  /** The file the QRM was read from, or '(in memory)'. */
  readonly source: string;
  private readonly featuresUnrecorded: boolean;
  private format: DialogueFormat | null = null;
  private backbone: Backbone | null = null;
  private ownsBackbone = false;

  constructor(p: QrmParts) {
    const M = p.heads.attributes.length;
    if (p.gate.config.numAttributes !== M) throw new QrlhfError(`QRM: the gate has ${p.gate.config.numAttributes} outputs for ${M} attributes`);
    if (p.debiasPenalties.length !== M) throw new QrlhfError(`QRM: ${p.debiasPenalties.length} debias penalties for ${M} attributes`);
    if (p.verbosity !== null && !p.heads.attributes.includes(p.verbosity)) {
      throw new QrlhfError(`QRM: verbosity attribute "${p.verbosity}" is not one of ${p.heads.attributes.join(', ')}`);
    }
    this.heads = p.heads;
    this.gate = p.gate;
    this.verbosity = p.verbosity;
    this.debiasPenalties = [...p.debiasPenalties];
    this.backbonePath = p.backbone ?? null;
    this.tokenizerPath = p.tokenizer ?? null;
    this.maxTokens = p.maxTokens ?? null;
    this.pooling = p.pooling ?? 'last';
    if (!FEATURE_POOLINGS.includes(this.pooling)) throw new QrlhfError(`QRM: pooling must be one of ${FEATURE_POOLINGS.join(', ')}, got "${this.pooling}"`);
    this.mixture = p.mixture ?? 'eq3';
    this.gatePattern = p.gatePattern && p.gatePattern.length > 0 ? [...p.gatePattern] : null;
    this.rearrange = p.rearrange ?? true;
    this.chatTemplate = p.chatTemplate ?? 'auto';
    this.normalise = p.normalise ?? 'none';
    this.features = p.features ?? null;
    this.featuresUnrecorded = p.features === undefined;
    this.source = p.source ?? '(in memory)';
    if (!QRM_NORMALISE.includes(this.normalise)) throw new QrlhfError(`QRM: normalise must be one of ${QRM_NORMALISE.join(', ')}, got "${String(this.normalise)}"`);
  }

  /** Per-attribute min/max that mapped raw labels onto the heads' [0, 1] scale (null: none). */
  get labelScaling(): LabelScaling | null {
    return headsLabelScaling(this.heads);
  }

  get taus(): Float32Array {
    return this.heads.taus;
  }

  get attributes(): string[] {
    return this.heads.attributes;
  }

  /** The gate's scale beta: the gate weights of every prompt sum to it (await: a GPU backend reads asynchronously). */
  async beta(): Promise<number> {
    return this.gate.beta();
  }

  /** The debiasing penalties p_j by attribute name (0 everywhere without debiasing). */
  get penalties(): Record<string, number> {
    return Object.fromEntries(this.heads.attributes.map((a, m) => [a, this.debiasPenalties[m]!]));
  }

  /**
   * β, the mean gate weight per attribute over these (prompt, response) items and the debiasing
   * penalties: what a report needs to say how the QRM mixes its attributes (the gate reads the
   * prompt only, so the responses do not change the weights). One backbone pass per item, as score().
   */
  async gateSummary(items: readonly PromptResponseItem[], opts: { batchSize?: number } = {}): Promise<QrmGateSummary> {
    const scores = await this.score(items, opts);
    return {
      beta: await this.beta(),
      attributes: [...this.attributes],
      meanGate: meanGateWeights(scores, this.attributes),
      debiasPenalties: this.penalties,
      verbosity: this.verbosity,
      n: items.length,
    };
  }

  /** Uses this backbone for score() instead of loading the one named in qrm.json. */
  setBackbone(b: Backbone): void {
    if (b.model.config.hiddenSize !== this.heads.d) {
      throw new QrlhfError(`QRM: the backbone's hidden size is ${b.model.config.hiddenSize}, the heads expect ${this.heads.d}`);
    }
    if (this.ownsBackbone && this.backbone && this.backbone !== b) this.backbone.model.dispose();
    this.backbone = b;
    this.ownsBackbone = false;
    this.format = null;
  }

  /** The dialogue format of the backbone's tokenizer for this QRM's chatTemplate (resolved once per backbone). */
  dialogueFormat(b: Backbone): DialogueFormat {
    this.format ??= dialogueFormatFor(this.chatTemplate, b.tokenizer);
    return this.format;
  }

  static async load(dir: string): Promise<QuantileRewardModel> {
    const cfgPath = join(dir, 'qrm.json');
    if (!existsSync(cfgPath)) throw new QrlhfError(`${dir}: not a QRM folder (no qrm.json)`);
    let j: QrmJson;
    try {
      j = JSON.parse(readFileSync(cfgPath, 'utf8')) as QrmJson;
    } catch (e) {
      throw new QrlhfError(`${cfgPath}: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
    }
    if (j.format !== 'qrlhf-qrm/1') throw new QrlhfError(`${cfgPath}: "format" must be "qrlhf-qrm/1", got ${JSON.stringify(j.format)}`);
    const heads = loadHeads(join(dir, 'heads.safetensors'));
    if (!Array.isArray(j.attributes) || j.attributes.join('\u0000') !== heads.attributes.join('\u0000')) {
      throw new QrlhfError(`${cfgPath}: "attributes" (${j.attributes}) differ from heads.safetensors (${heads.attributes})`);
    }
    if (!Array.isArray(j.taus) || j.taus.length !== heads.taus.length || j.taus.some((t, k) => Math.abs(t - heads.taus[k]!) > 1e-6)) {
      throw new QrlhfError(`${cfgPath}: "taus" differ from heads.safetensors`);
    }
    if (!j.gate || typeof j.gate !== 'object') throw new QrlhfError(`${cfgPath}: "gate" (the gate's shape) is missing`);
    const gatePath = join(dir, 'gate.safetensors');
    if (!existsSync(gatePath)) throw new QrlhfError(`${gatePath}: gate file not found`);
    const gate = GateNetwork.fromTensors(j.gate, readSafetensors(gatePath).tensors as Record<string, { shape: number[]; data: Float32Array }>, gatePath);
    const ref = (p: string | null | undefined): string | null => (p ? (isAbsolute(p) ? p : resolve(dir, p)) : null);
    if (j.features !== undefined && j.features !== null) checkProvenanceShape(j.features, `${cfgPath}: "features"`);
    if (j.features) {
      // qrm.json's own scoring settings must be those of its features (a hand edit would break it)
      const pool = j.pooling ?? 'last';
      if (pool !== j.features.pooling) throw new QrlhfError(`${cfgPath}: "pooling" is '${pool}' but its features were pooled '${j.features.pooling}' ("features.pooling"); set them equal or retrain`);
      if (j.maxTokens !== undefined && j.maxTokens !== null && j.maxTokens !== j.features.maxTokens) {
        throw new QrlhfError(`${cfgPath}: "maxTokens" is ${j.maxTokens} but its features were cut to ${j.features.maxTokens} tokens ("features.maxTokens"); set them equal or retrain`);
      }
    }
    return new QuantileRewardModel({
      heads,
      gate,
      verbosity: j.verbosity ?? null,
      debiasPenalties: j.debiasPenalties,
      backbone: ref(j.backbone),
      tokenizer: ref(j.tokenizer),
      maxTokens: j.maxTokens ?? null,
      pooling: j.pooling ?? 'last',
      mixture: j.mixture ?? 'eq3',
      gatePattern: j.gatePattern ?? null,
      rearrange: j.rearrange ?? true,
      normalise: j.normalise ?? 'none',
      chatTemplate: j.chatTemplate === undefined || j.chatTemplate === 'auto' || j.chatTemplate === 'hh' ? j.chatTemplate : ref(j.chatTemplate)!,
      features: j.features,
      source: cfgPath,
    });
  }

  toJSON(): QrmJson {
    const features = this.featuresUnrecorded ? {} : { features: this.features };
    return {
      format: 'qrlhf-qrm/1',
      taus: Array.from(this.heads.taus),
      attributes: [...this.heads.attributes],
      verbosity: this.verbosity,
      debiasPenalties: [...this.debiasPenalties],
      labelScaling: this.labelScaling,
      backbone: this.backbonePath,
      tokenizer: this.tokenizerPath,
      maxTokens: this.maxTokens,
      pooling: this.pooling,
      gatePattern: this.gatePattern,
      rearrange: this.rearrange,
      chatTemplate: this.chatTemplate,
      normalise: this.normalise,
      gate: { ...this.gate.config },
      mixture: this.mixture,
      ...features,
    };
  }

  /**
   * Writes heads.safetensors, gate.safetensors and qrm.json into the folder, each atomically
   * (temporary name, then rename) and qrm.json last, so a reader finds either the old model or the
   * new one's complete files. Other files in the folder (a metrics log, the fit's outputs) are kept.
   */
  async save(dir: string): Promise<void> {
    const target = resolve(dir);
    if (existsSync(target) && !statSync(target).isDirectory()) throw new QrlhfError(`${target}: exists and is not a folder`);
    mkdirSync(target, { recursive: true });
    saveHeads(join(target, 'heads.safetensors'), this.heads);
    writeSafetensors(join(target, 'gate.safetensors'), await this.gate.toTensors(), { format: 'qrlhf-gate/1' });
    writeFileAtomic(join(target, 'qrm.json'), JSON.stringify({ ...this.toJSON(), beta: await this.beta() }, null, 2) + '\n');
  }

  /**
   * Scores n (prompt feature, response feature) pairs, each [n, d] row-major: attribute quantiles
   * from the heads on the response feature, debiasing, the gate on the prompt feature, mixing.
   */
  async scoreFeatures(promptFeat: Float32Array, respFeat: Float32Array, n: number, where: (i: number) => string = (i) => `item ${i}`): Promise<QrmScore[]> {
    const { d, attributes } = this.heads;
    const M = attributes.length;
    const K = this.heads.taus.length;
    if (promptFeat.length !== n * d || respFeat.length !== n * d) {
      throw new QrlhfError(`QRM: expected prompt and response features of ${n} x ${d}, got ${promptFeat.length} and ${respFeat.length} values`);
    }
    const raw = await predictAttributeQuantiles(this.heads, respFeat, n, { rearrange: this.rearrange });
    const vIdx = this.verbosity === null ? -1 : attributes.indexOf(this.verbosity);
    const attrQ = applyDebias(raw, n, M, K, this.debiasPenalties, vIdx);
    const g = await this.gate.predict(promptFeat, n);
    const mixed = mixQuantiles(attrQ, g, n, M, this.heads.taus, this.mixture);
    const out: QrmScore[] = [];
    if (!QRM_NORMALISE.includes(this.normalise)) throw new QrlhfError(`QRM: normalise must be one of ${QRM_NORMALISE.join(', ')}, got "${String(this.normalise)}"`);
    for (let i = 0; i < n; i++) {
      const quantiles = mixed.slice(i * K, (i + 1) * K);
      if (this.normalise === 'kept-weight') {
        const w = keptGateWeight(attrQ.subarray(i * M * K, (i + 1) * M * K), g.subarray(i * M, (i + 1) * M), M, K);
        // every attribute zeroed: the mix is 0 too, and stays 0
        for (let k = 0; k < K; k++) quantiles[k] = w === 0 ? 0 : quantiles[k]! / w;
      }
      let s = 0;
      for (let k = 0; k < K; k++) s += quantiles[k]!;
      // never hand out a NaN reward: say which input and where it came from
      if (!Number.isFinite(s)) {
        const from = firstNonFinite(respFeat.subarray(i * d, (i + 1) * d)) >= 0 || firstNonFinite(promptFeat.subarray(i * d, (i + 1) * d)) >= 0
          ? 'its features are not finite' : 'the heads or the gate overflow on it';
        throw new QrlhfError(`${where(i)}: the reward is not finite (${s / K}): ${from}`);
      }
      out.push({
        quantiles,
        expectation: s / K,
        gate: g.slice(i * M, (i + 1) * M),
        attributeQuantiles: attrQ.slice(i * M * K, (i + 1) * M * K),
      });
    }
    return out;
  }

  /** Loads the backbone named in qrm.json (once) and returns it. */
  async loadBackbone(): Promise<Backbone> {
    if (this.backbone) return this.backbone;
    if (!this.backbonePath) {
      throw new QrlhfError('QRM: no backbone is recorded in qrm.json; give one (--backbone) or call setBackbone()');
    }
    // A released-layout reward folder is its own backbone: its model.* tensors, no lm_head.
    const loaded = isReleasedQrmFolder(this.backbonePath)
      ? await loadRewardBackbone(this.backbonePath, this.tokenizerPath)
      : await loadModel(this.backbonePath, this.tokenizerPath ? { tokenizer: this.tokenizerPath } : {});
    const b = { model: loaded.model, tokenizer: loaded.tokenizer };
    try {
      this.checkScoringFeatures(b, this.backbonePath);
    } catch (e) {
      loaded.model.dispose();
      throw e;
    }
    this.setBackbone(b);
    this.ownsBackbone = true;
    return this.backbone!;
  }

  /**
   * Refuses to score with features made otherwise than the training features (provenance.ts): the
   * backbone at `backbonePath` (its config and weights), its tokenizer, the chat template as it
   * resolves for that tokenizer, the pooling and the truncation length. A QRM that records none
   * gets one warning line. Called when the backbone is loaded from a path (setBackbone() with an
   * object in memory is the caller's responsibility).
   */
  checkScoringFeatures(b: Backbone, backbonePath: string): void {
    if (this.features === null) {
      if (this.featuresUnrecorded && !this.warned) {
        this.warned = true;
        warnUnrecorded('QRM', [this.source]);
      }
      return;
    }
    const format = this.dialogueFormat(b);
    const now: FeatureProvenance = {
      pooling: this.pooling,
      maxTokens: this.maxTokens ?? b.model.config.maxPositionEmbeddings,
      backbone: { path: backbonePath, ...backboneFingerprint(backbonePath) },
      tokenizer: { path: this.tokenizerPath, fingerprint: tokenizerFingerprint(b.tokenizer) },
      chatTemplate: { setting: this.chatTemplate, name: format.template ? format.name : 'hh', fingerprint: formatFingerprint(format) },
      engine: { kind: 'local' },
    };
    requireSameProvenance(
      'QRM',
      { what: 'trained on features', file: this.source, p: this.features },
      { what: 'scoring with features', file: backbonePath, p: now },
      { engine: false, fix: 'score with the backbone, tokenizer and settings it was trained with, or retrain it' },
    );
  }
  private warned = false;

  /** Scores (prompt, response) pairs end to end: one backbone pass each, then scoreFeatures. */
  async score(pairs: readonly PromptResponseItem[], opts: { batchSize?: number; where?: (i: number) => string } = {}): Promise<QrmScore[]> {
    if (pairs.length === 0) return [];
    const b = await this.loadBackbone();
    const limitHint = this.maxTokens ? ` (the QRM's maxTokens in qrm.json)` : ` (the backbone's context is ${b.model.config.maxPositionEmbeddings} tokens)`;
    const f = await pairFeatures(b, pairs, {
      batchSize: opts.batchSize ?? 8, maxTokens: this.maxTokens ?? undefined, pooling: this.pooling, gatePattern: this.gatePattern ?? undefined,
      format: this.dialogueFormat(b), where: opts.where, limitHint,
    });
    return this.scoreFeatures(f.prompt, f.response, pairs.length, opts.where);
  }

  /**
   * Scores token sequences as they are (no tokenizer, no truncation): the response feature at the
   * last token ('last' pooling), the prompt feature at the last occurrence of gatePattern, or at
   * `promptEnd` when the QRM has no pattern.
   */
  async scoreTokens(items: readonly { ids: readonly number[]; promptEnd?: number }[], opts: { batchSize?: number } = {}): Promise<QrmScore[]> {
    if (items.length === 0) return [];
    const b = await this.loadBackbone();
    const enc = items.map((it, i) => {
      const ids = [...it.ids];
      let promptEnd = it.promptEnd ?? -1;
      if (this.gatePattern) promptEnd = findGatePosition(ids, this.gatePattern, `sequence ${i}`);
      if (!(Number.isInteger(promptEnd) && promptEnd >= 0 && promptEnd < ids.length)) {
        throw new QrlhfError(`sequence ${i}: promptEnd must be a position in the sequence (0 … ${ids.length - 1}), got ${it.promptEnd}`);
      }
      return { ids, promptEnd, truncated: 0 };
    });
    const f = await encodedFeatures(b, enc, { batchSize: opts.batchSize ?? 8, pooling: this.pooling });
    return this.scoreFeatures(f.prompt, f.response, items.length);
  }

  /** Frees the gate (and the backbone when this model loaded it). */
  dispose(): void {
    this.gate.dispose();
    if (this.ownsBackbone) this.backbone?.model.dispose();
    this.backbone = null;
  }
}

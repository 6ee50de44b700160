/**
 * Utilities (SPEC §5): a utility maps the K quantiles q_1 <= ... <= q_K of one response's reward
 * distribution (at levels tau_1 < ... < tau_K) to one scalar reward. Each quantile stands for an
 * equal share 1/K of the probability mass, so "E[f(r)]" is approximated by mean_k f(q_k), as the
 * paper does for its risk-aware utility (eq. 4).
 */
import { existsSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { QrlhfError, checkField, defineConfig } from '@qrlhf/core';

export type Utility = (quantiles: Float32Array, taus: Float32Array) => number;

export type BuiltinUtilityName = 'expectation' | 'exponential' | 'certainty-equivalent' | 'cvar';
export const BUILTIN_UTILITIES: readonly BuiltinUtilityName[] = ['expectation', 'exponential', 'certainty-equivalent', 'cvar'];

export interface UtilitySpec {
  /** A built-in name, or the path of a .js/.mjs/.cjs/.ts/.mts module exporting the utility. */
  name: BuiltinUtilityName | string;
  /** Risk aversion of `exponential` and `certainty-equivalent` (UTILITY_FIELDS.lambda: its bound and default). */
  lambda?: number;
  /** Tail level of `cvar`: the mean of the quantiles with tau_k <= alpha (UTILITY_FIELDS.alpha). */
  alpha?: number;
}

/** Levels are float32 (0.05 is stored as 0.0500000007): compare with this much slack. */
const TAU_SLACK = 1e-6;

function requireNonEmpty(q: Float32Array, what: string): void {
  if (q.length === 0) throw new QrlhfError(`${what}: no quantiles given (expected K >= 1 values)`);
}

/** Risk-neutral: mean_k q_k. */
export function expectationUtility(q: Float32Array): number {
  requireNonEmpty(q, 'expectation');
  let s = 0;
  for (let k = 0; k < q.length; k++) s += q[k]!;
  return s / q.length;
}

/** The paper's risk-aware utility (eq. 4): mean_k −exp(−lambda q_k). */
export function exponentialUtility(q: Float32Array, lambda: number): number {
  requireNonEmpty(q, 'exponential');
  let s = 0;
  for (let k = 0; k < q.length; k++) s -= Math.exp(-lambda * q[k]!);
  return s / q.length;
}

/**
 * Certainty equivalent of the exponential utility, on the reward's own scale:
 * −(1/lambda) log mean_k exp(−lambda q_k). Computed with log-sum-exp around the largest exponent,
 * so it stays finite for large lambda·|q| (where exponentialUtility under/overflows).
 */
export function certaintyEquivalent(q: Float32Array, lambda: number): number {
  requireNonEmpty(q, 'certainty-equivalent');
  let m = -Infinity;
  for (let k = 0; k < q.length; k++) m = Math.max(m, -lambda * q[k]!);
  let s = 0;
  for (let k = 0; k < q.length; k++) s += Math.exp(-lambda * q[k]! - m);
  return -(m + Math.log(s / q.length)) / lambda;
}

/** CVaR_alpha: the mean of q_k over the levels tau_k <= alpha (the left tail). */
export function cvarUtility(q: Float32Array, taus: Float32Array, alpha: number): number {
  requireNonEmpty(q, 'cvar');
  if (taus.length !== q.length) {
    throw new QrlhfError(`cvar: ${q.length} quantiles but ${taus.length} levels tau (expected one level per quantile)`);
  }
  let s = 0;
  let c = 0;
  for (let k = 0; k < q.length; k++) {
    if (taus[k]! <= alpha + TAU_SLACK) {
      s += q[k]!;
      c++;
    }
  }
  if (c === 0) {
    throw new QrlhfError(
      `cvar: no quantile level tau <= alpha = ${alpha} (the smallest level is ${+taus[0]!.toPrecision(6)}); choose alpha >= ${+taus[0]!.toPrecision(6)}`,
    );
  }
  return s / c;
}

const MODULE_EXTENSIONS = ['.js', '.mjs', '.cjs', '.ts', '.mts'];

/** A utility given as a module: a path, or a file name with a module extension (the built-in names are neither). */
export function isUtilityModule(name: string): boolean {
  return name.includes('/') || name.includes('\\') || MODULE_EXTENSIONS.includes(extname(name));
}

/**
 * The utility settings of every stage that turns quantiles into a reward (rloo, qrm score, qrm
 * eval): spread into their schemas. The bounds here are the only ones: makeUtility checks its
 * spec against these same fields.
 */
export const UTILITY_FIELDS = defineConfig({
  utility: {
    type: 'string', default: 'expectation', path: isUtilityModule,
    doc: `utility of the reward quantiles: ${BUILTIN_UTILITIES.join(' | ')} | PATH of a module exporting (quantiles, taus) => number`,
  },
  lambda: { type: 'number', default: 1, min: 0, minExclusive: true, doc: 'risk aversion of exponential / certainty-equivalent' },
  alpha: { type: 'number', default: 0.25, min: 0, minExclusive: true, max: 1, doc: 'tail level of cvar: the mean of the quantiles with tau <= alpha' },
});

/**
 * Loads a user's utility from a module: its default export, or else its export named `utility`,
 * must be a function (quantiles: Float32Array, taus: Float32Array) => number. The returned
 * function checks every result and throws a QrlhfError naming the file when it is not a finite
 * number. `.ts` files load when Node runs with a TypeScript loader (tsx, as the qrlhf CLI does).
 */
export async function loadUtilityModule(path: string): Promise<Utility> {
  const file = resolve(path);
  if (!existsSync(file)) throw new QrlhfError(`utility module ${file}: file not found`);
  if (!MODULE_EXTENSIONS.includes(extname(file))) {
    throw new QrlhfError(`utility module ${file}: expected a ${MODULE_EXTENSIONS.join('/')} file`);
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new QrlhfError(`utility module ${file}: could not be imported (${msg})`, { cause: e });
  }
  let fn: unknown = mod['default'];
  // A CommonJS module imported from ESM puts module.exports on `default`.
  if (fn !== null && typeof fn === 'object' && typeof (fn as Record<string, unknown>)['utility'] === 'function') {
    fn = (fn as Record<string, unknown>)['utility'];
  }
  if (typeof fn !== 'function') fn = mod['utility'];
  if (typeof fn !== 'function') {
    throw new QrlhfError(
      `utility module ${file}: expected a default export or an export named "utility" that is a function ` +
        `(quantiles: Float32Array, taus: Float32Array) => number; found exports: ${Object.keys(mod).join(', ') || 'none'}`,
    );
  }
  const user = fn as (q: Float32Array, t: Float32Array) => unknown;
  return (q: Float32Array, t: Float32Array): number => {
    let v: unknown;
    try {
      v = user(q, t);
    } catch (e) {
      // the user's code failed: say whose, and what it said (its stack with QRLHF_DEBUG=1)
      const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
      throw new QrlhfError(`utility module ${file}: threw when called (${msg})`, { cause: e });
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw new QrlhfError(`utility module ${file}: returned ${String(v)} for quantiles [${Array.from(q.slice(0, 4)).join(', ')}${q.length > 4 ? ', …' : ''}] (expected a finite number)`);
    }
    return v;
  };
}

/** A utility from its spec: a built-in name with its parameter, or a module path. */
export async function makeUtility(spec: UtilitySpec): Promise<Utility> {
  switch (spec.name) {
    case 'expectation':
      return (q) => expectationUtility(q);
    case 'exponential': {
      const lambda = checkField(UTILITY_FIELDS.lambda, spec.lambda ?? UTILITY_FIELDS.lambda.default, `utility ${spec.name}: lambda`);
      return (q) => exponentialUtility(q, lambda);
    }
    case 'certainty-equivalent': {
      const lambda = checkField(UTILITY_FIELDS.lambda, spec.lambda ?? UTILITY_FIELDS.lambda.default, `utility ${spec.name}: lambda`);
      return (q) => certaintyEquivalent(q, lambda);
    }
    case 'cvar': {
      const alpha = checkField(UTILITY_FIELDS.alpha, spec.alpha ?? UTILITY_FIELDS.alpha.default, 'utility cvar: alpha');
      return (q, t) => cvarUtility(q, t, alpha);
    }
    default:
      if (!isUtilityModule(spec.name)) {
        throw new QrlhfError(
          `utility "${spec.name}": expected one of ${BUILTIN_UTILITIES.join(', ')} or the path of a ` +
            `${MODULE_EXTENSIONS.join('/')} module exporting (quantiles, taus) => number`,
        );
      }
      return loadUtilityModule(spec.name);
  }
}

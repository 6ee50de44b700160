export { DEFAULT_TAUS, taus, fitQuantileHeads, predictAttributeQuantiles, toLabelScale } from './heads.js';
export type { QuantileHeads, FitQuantileHeadsOptions } from './heads.js';
export { solveQuantileLevels, orderQuantile } from './solver.js';
export type { SolveOptions, SolveResult } from './solver.js';
export { solveBoundedLP, quantileLP, quantileObjective, pinball } from './lp.js';
export type { BoundedLP, LPResult, LPStatus, LPOptions, QuantileLPResult } from './lp.js';

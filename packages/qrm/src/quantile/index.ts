export { DEFAULT_TAUS, taus, fitQuantileHeads, formatFitReport, predictAttributeQuantiles, toLabelScale } from './heads.js';
export type { QuantileHeads, FitQuantileHeadsOptions, FittedQuantileHeads, QuantileFitReport, QuantileAttributeReport, QuantileLevelReport } from './heads.js';
export { solveQuantileLevels, orderQuantile } from './solver.js';
export { DualPool, basisDual } from './certificate.js';
export type { SolveOptions, SolveResult } from './solver.js';
export { solveBoundedLP, quantileLP, quantileObjective, pinball } from './lp.js';
export type { BoundedLP, LPResult, LPStatus, LPOptions, QuantileLPResult } from './lp.js';

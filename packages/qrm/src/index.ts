export * from './quantile/index.js';
export * from './utilities.js';
export * from './debias.js';
export * from './gate.js';
export * from './eval.js';
export * from './features.js';
export * from './model.js';
export * from './stage2.js';

export * from './quantile/index.js';

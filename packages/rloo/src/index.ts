export * from './plot/figure3.js';

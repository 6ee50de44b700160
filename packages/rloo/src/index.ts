export * from './config.js';
export * from './reward.js';
export * from './objective.js';
export * from './prompts.js';
export * from './learner.js';
export * from './train.js';
export * from './plot/figure3.js';
export * from './engine.js';

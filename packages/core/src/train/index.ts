export * from './adamw.js';
export * from './schedule.js';
export * from './clip.js';
export * from './state.js';
export * from './run.js';
export * from './loop.js';

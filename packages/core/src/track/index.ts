export * from './sink.js';
export * from './jsonl.js';
export * from './names.js';
export * from './console.js';
export * from './wandb.js';
export * from './tracker.js';

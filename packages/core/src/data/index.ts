export * from './jsonl.js';
export * from './dialogue.js';
export * from './hh.js';

export * from './config.js';
export * from './llama.js';
export * from './lora.js';
export * from './sampling.js';

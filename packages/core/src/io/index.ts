export * from './atomic.js';
export * from './fsfault.js';
export * from './safetensors.js';
export * from './llama2c.js';
export * from './checkpoint.js';
export * from './gguf.js';

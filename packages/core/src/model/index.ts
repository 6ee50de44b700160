export * from './config.js';
export * from './llama.js';
export * from './lora.js';
export * from './sampling.js';
export { referenceForward, referenceHidden } from './reference.js';
export { ropeInverseFrequencies } from './rope.js';
export * from './memory.js';

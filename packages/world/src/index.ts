export * from './spec.js';
export * from './mixture.js';
export { parseResponse, askedObject, HUMAN_TAG, ASSISTANT_TAG, type ParsedMove } from './text.js';
export * from './bpe.js';
export * from './world.js';
export * from './data.js';

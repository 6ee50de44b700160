export * from './template.js';
export * from './format.js';

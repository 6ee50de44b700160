import test from 'ava';
import { initBackend } from '@qrlhf/core';
import { defineSamplingTests } from './model-sampling-cases.js';

await initBackend('wasm', { quiet: true });
defineSamplingTests(test, 'wasm');

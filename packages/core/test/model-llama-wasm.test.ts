import test from 'ava';
import { initBackend } from '@qrlhf/core';
import { defineForwardTests } from './model-llama-cases.js';

await initBackend('wasm', { quiet: true });
defineForwardTests(test, 'wasm');

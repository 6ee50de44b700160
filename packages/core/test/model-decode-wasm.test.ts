import test from 'ava';
import { initBackend } from '@qrlhf/core';
import { defineDecodeTests } from './model-decode-cases.js';

await initBackend('wasm', { quiet: true });
defineDecodeTests(test, 'wasm');

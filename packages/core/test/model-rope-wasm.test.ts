import test from 'ava';
import { initBackend } from '@qrlhf/core';
import { defineRopeTests } from './model-rope-cases.js';

await initBackend('wasm', { quiet: true });
defineRopeTests(test, 'wasm');

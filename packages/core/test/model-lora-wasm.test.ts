import test from 'ava';
import { initBackend } from '@qrlhf/core';
import { defineLoraTests } from './model-lora-cases.js';

await initBackend('wasm', { quiet: true });
defineLoraTests(test, 'wasm');

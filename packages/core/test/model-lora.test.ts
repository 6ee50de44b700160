import test from 'ava';
import { defineLoraTests } from './model-lora-cases.js';

defineLoraTests(test, 'cpu');

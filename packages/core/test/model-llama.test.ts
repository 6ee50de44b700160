import test from 'ava';
import { defineConfigTests, defineForwardTests } from './model-llama-cases.js';

// tfjs's default cpu backend.
defineForwardTests(test, 'cpu');
defineConfigTests(test);

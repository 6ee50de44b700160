import test from 'ava';
import { defineConfigTests, defineForwardTests, defineRandomModelTests } from './model-llama-cases.js';

// tfjs's default cpu backend.
defineForwardTests(test, 'cpu');
defineConfigTests(test);
defineRandomModelTests(test);

import test from 'ava';
import { defineDecodeTests } from './model-decode-cases.js';

// tfjs's default cpu backend.
defineDecodeTests(test, 'cpu');

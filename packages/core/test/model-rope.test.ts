import test from 'ava';
import { defineRopeTests } from './model-rope-cases.js';

// tfjs's default cpu backend.
defineRopeTests(test, 'cpu');

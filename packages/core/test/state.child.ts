// Child process of state.test.ts: saves checkpoints into argv[2] in a tight loop until killed.
// Checkpoint k holds values that are a known function of k, so the parent can check that what it
// loads after a SIGKILL is one complete checkpoint and not a mix of two.
import * as tf from '@tensorflow/tfjs';
import { Rng, saveTrainingState } from '@qrlhf/core';
import { checkpointTensors } from './state.fixture.js';

const dir = process.argv[2]!;
const start = Number(process.argv[3] ?? 0);
const rng = new Rng('sigkill');
for (let k = 0; k < start; k++) rng.next();
for (let k = start; ; k++) {
  const { variables, optimizer } = checkpointTensors(k);
  await saveTrainingState(dir, { step: k, variables, optimizer: { step: k, tensors: optimizer }, rng: rng.state(), extra: { k, note: `checkpoint ${k}` } });
  for (const t of [...Object.values(variables), ...Object.values(optimizer)]) t.dispose();
  process.stdout.write(`saved ${k}\n`);
  rng.next();
  if (tf.memory().numTensors > 100) throw new Error('leak');
}

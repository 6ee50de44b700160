/**
 * Child process of resume.test.ts: one RLOO run on the tiny fixtures with the stub reward,
 * printing "step N" after each step (after its checkpoint, if any, is written).
 * argv: policyDir promptsFile outDir steps resume(0|1)
 */
import { runRloo } from '../src/index.js';
import { smallConfig, stubReward } from './fixture.js';

const [policy, prompts, out, steps, resume] = process.argv.slice(2) as [string, string, string, string, string];
await runRloo(smallConfig({ policy, prompts, out, steps: Number(steps), resume: resume === '1', checkpointEvery: 2, sampleEvery: 1, k: 3, ppoEpochs: 1, loraDropout: 0.1 }), {
  reward: stubReward(),
  quiet: true,
  onStep: (s) => process.stdout.write(`step ${s}\n`),
});
process.stdout.write('done\n');

// Child process of resume.test.ts: runs SFT from a config file (argv[2]), with resume when
// argv[3] is "resume", printing "step N" after each optimiser step so the parent can pick its moment.
import { loadSftConfig, runSft } from '../src/index.js';

const cfg = loadSftConfig(process.argv[2]!, { resume: process.argv[3] === 'resume' });
await runSft(cfg, { quiet: true, onStep: (s) => process.stdout.write(`step ${s}\n`) });
process.stdout.write('done\n');

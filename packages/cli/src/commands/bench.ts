import { stageCommand } from '../options.js';
import { BENCH_SCHEMA, runBench } from '../stages/bench.js';

/** A fresh process each time: --stock only works before the backend is chosen, which happens once. */
export const benchCommand = stageCommand({
  command: 'bench',
  describe: 'measure matmul, LoRA training and sampling speed on this machine (QRLHF_NATIVE=0: without the native addon)',
  schema: BENCH_SCHEMA,
  run: runBench,
  examples: [['$0 bench --suite train --models 25m --json bench.json', 'one LoRA step of the 25m model, as JSON too']],
});

// Child of wandb.test.ts: a short "run" whose only W&B server never answers. It must end by itself.
import { Tracker } from '@qrlhf/core';

const dir = process.argv[2]!;
const timeoutMs = Number(process.argv[3]);
const tracker = await Tracker.create({ dir, wandb: { project: 'qrlhf-test', timeoutMs, closeTimeoutMs: timeoutMs, flushTimeoutMs: timeoutMs } });
for (let step = 0; step < 200; step++) tracker.log({ step, loss: 1 / (step + 1), lr: 3e-4 });
await tracker.close();
process.stdout.write(`done wandb=${tracker.wandb ? 'on' : 'off'}\n`);

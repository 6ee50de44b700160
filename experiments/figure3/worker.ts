/**
 * A worker process of the Figure 3 runner (jobs.ts runJobs, config key `parallel` > 1): takes jobs
 * from the runner over IPC, runs each with runJob in this process (the QRM loaded once), answers
 * with the stage seconds or the error, and exits when the runner disconnects (or dies).
 */
import { QrlhfError, initBackend } from '@qrlhf/core';
import { JobContext, runJob, type FromWorker, type ToWorker } from './jobs.js';
import { stageSeconds } from './stage.js';

let ctx: JobContext | null = null;
let queue = Promise.resolve();

process.on('message', (m: ToWorker) => {
  queue = queue.then(async () => {
    let reply: FromWorker;
    try {
      if (!ctx) {
        await initBackend(m.cfg.backend);
        ctx = new JobContext(m.cfg, m.out);
      }
      for (const k of Object.keys(stageSeconds)) delete stageSeconds[k];
      await runJob(ctx, m.job);
      reply = { ok: true, seconds: { ...stageSeconds } };
    } catch (e) {
      reply = { ok: false, message: e instanceof Error ? (e instanceof QrlhfError ? e.message : e.stack ?? e.message) : String(e), user: e instanceof QrlhfError };
    }
    process.send!(reply);
  });
});
// The runner disconnects when it has no job left for this worker, or when it died or stopped the
// others after a failure: either way, stop now (a run interrupted here resumes from its checkpoint).
process.on('disconnect', () => process.exit(0));

/**
 * `qrlhf serve`: the OpenAI-compatible subset qrlhf's engines use (completions with token ids,
 * last-token embeddings, run-time LoRA adapters) for a model folder, and a quantile reward model
 * as a reward endpoint (its own /v1/reward and OpenRLHF's /get_reward). See serve/server.ts and
 * docs/ENGINES.md. Every key of SERVE_SCHEMA is a flag.
 */
import { SERVE_SCHEMA, startServer } from '../serve/server.js';
import { stageCommand } from '../options.js';

export const serveCommand = stageCommand({
  command: 'serve',
  describe: 'Serve a model (OpenAI-compatible completions, embeddings, run-time LoRA) and/or a QRM as a reward endpoint, on Node http',
  schema: SERVE_SCHEMA,
  run: async (cfg) => {
    const s = await startServer(cfg, (line) => process.stderr.write(line + '\n'));
    process.stdout.write(`qrlhf serve: listening on ${s.url}/v1 (${[cfg.model && `model ${cfg.model}`, cfg.qrm && `qrm ${cfg.qrm}, utility ${cfg.utility}`].filter(Boolean).join('; ')})\n`);
    const stop = () => void s.close().then(() => process.exit(0));
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    await new Promise<never>(() => undefined);
  },
  examples: [
    ['$0 serve --model runs/sft/merged --port 8000', 'the policy, for `rloo --engine.kind openai --engine.base-url http://127.0.0.1:8000/v1`'],
    ['$0 serve --qrm runs/qrm --utility exponential --lambda 5 --port 5000', "a reward endpoint: POST /v1/reward, and OpenRLHF's POST /get_reward"],
  ],
});

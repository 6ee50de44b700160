/**
 * `qrlhf serve`: the OpenAI-compatible subset qrlhf's engines use (completions with token ids,
 * last-token embeddings, run-time LoRA adapters) for a model folder, and a quantile reward model
 * as a reward endpoint (its own /v1/reward and OpenRLHF's /get_reward). See serve/server.ts.
 * Every key of SERVE_SCHEMA is a flag (kebab-case).
 */
import type { Argv, CommandModule, Options } from 'yargs';
import { applyOverrides, defaultConfig } from '@qrlhf/core';
import { SERVE_SCHEMA, startServer } from '../serve/server.js';
import { handle } from '../run.js';

type Args = Record<string, unknown>;
const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function optionOf(key: string): Options {
  const f = SERVE_SCHEMA[key as keyof typeof SERVE_SCHEMA];
  const dflt = f.default === null ? 'none' : String(f.default);
  return { type: 'string', describe: `${f.doc} [default: ${dflt}]`, requiresArg: true };
}

export const serveCommand: CommandModule<object, Args> = {
  command: 'serve',
  describe: 'Serve a model (OpenAI-compatible completions, embeddings, run-time LoRA) and/or a QRM as a reward endpoint, on Node http',
  builder: (y: Argv) => {
    let a = y as Argv<Args>;
    for (const key of Object.keys(SERVE_SCHEMA)) a = a.option(kebab(key), optionOf(key));
    return a
      .example('$0 serve --model runs/sft/merged --port 8000', 'the policy, for `rloo --engine.kind openai --engine.base-url http://127.0.0.1:8000/v1`')
      .example('$0 serve --qrm runs/qrm --utility exponential --lambda 5 --port 5000', "a reward endpoint: POST /v1/reward, and OpenRLHF's POST /get_reward");
  },
  handler: handle(async (a: Args) => {
    const flags: Record<string, unknown> = {};
    for (const key of Object.keys(SERVE_SCHEMA)) {
      const v = a[kebab(key)] ?? a[key];
      if (v !== undefined) flags[key] = v;
    }
    const cfg = applyOverrides(SERVE_SCHEMA, defaultConfig(SERVE_SCHEMA), flags);
    const s = await startServer(cfg, (line) => process.stderr.write(line + '\n'));
    process.stdout.write(`qrlhf serve: listening on ${s.url}/v1 (${[cfg.model && `model ${cfg.model}`, cfg.qrm && `qrm ${cfg.qrm}, utility ${cfg.utility}`].filter(Boolean).join('; ')})\n`);
    const stop = () => void s.close().then(() => process.exit(0));
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    await new Promise<never>(() => undefined);
  }),
};

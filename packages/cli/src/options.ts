/**
 * The command line generated from a stage's schema: every setting a flag (kebab-case; a block's
 * keys dotted: --rloo.lr, --engine.base-url), its doc, choices, bounds and default in --help, and
 * `--config FILE` for a JSON file of the same keys. yargs only collects the strings; the config
 * layer (@qrlhf/core loadConfig) parses, checks and resolves them, so a value means the same in a
 * file and as a flag, and a bad one is refused with the same one-line message.
 *
 * A command file is then a few lines:
 *
 *   export const fitCommand = stageCommand({
 *     command: 'fit', describe: '...', schema: QRM_FIT_SCHEMA, run: runQrmFit,
 *     examples: [['$0 qrm fit --features F --out D', 'the paper setting']],
 *   });
 */
import yargs from 'yargs';
import type { Argv, CommandModule, Options } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { camel, fieldHelp, flagOf, flattenSchema, loadConfig, type ConfigOf, type ConfigSchema, type ConfigValueField } from '@qrlhf/core';
import { handle, reportAndExit } from './run.js';

/**
 * yargs must keep "--rloo.lr" as one flag name (its dot-notation would make an object that strict
 * mode refuses) and leave numbers as typed (the config layer parses them, and names a bad one as
 * given).
 */
export const PARSER_CONFIGURATION = { 'dot-notation': false, 'parse-numbers': false } as const;

/** The yargs option of one setting. Values stay strings (booleans stay booleans): the config layer parses them. */
function optionOf(f: ConfigValueField): Options {
  const [shown, ...rest] = fieldHelp(f).split('; ');
  const common = { defaultDescription: shown!.slice('default: '.length), requiresArg: f.type !== 'boolean' } as const;
  const describe = (kind: string) => `${f.doc}${rest.length ? ` (${rest.join('; ')})` : ''}${kind ? ` [${kind}]` : ''}`;
  switch (f.type) {
    case 'boolean':
      return { ...common, type: 'boolean', describe: describe('') };
    case 'string':
      return { ...common, type: 'string', describe: describe('') };
    case 'string[]':
      return f.repeat ? { ...common, type: 'string', array: true, describe: describe('') } : { ...common, describe: describe('list: a,b,...') };
    case 'number[]':
      return { ...common, describe: describe('list: x,y,...') };
    case 'int':
      return { ...common, describe: describe('integer') };
    case 'number':
      return { ...common, describe: describe('number') };
  }
}

/** Adds one option per setting of the schema (blocks flattened to dotted flags). */
export function schemaOptions<T>(y: Argv<T>, schema: ConfigSchema): Argv<T> {
  let a = y.parserConfiguration(PARSER_CONFIGURATION);
  for (const [key, f] of flattenSchema(schema)) a = a.option(flagOf(key).slice(2), optionOf(f));
  return a;
}

/** The settings given on the command line, by dotted key ({"rloo.maxSteps": "3"}); flags not given are left out. */
export function flagsOf(args: Record<string, unknown>, schema: ConfigSchema): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key] of flattenSchema(schema)) {
    const flag = flagOf(key).slice(2);
    const v = args[flag] ?? args[key] ?? args[camel(flag)];
    if (v !== undefined) out[key] = v;
  }
  return out;
}

export interface StageCommandSpec<S extends ConfigSchema> {
  /** yargs command name (e.g. 'fit'). */
  command: string;
  describe: string;
  schema: S;
  /** The stage's run function; it gets the resolved config (defaults < --config file < flags). */
  run: (cfg: ConfigOf<S>, opts: { quiet: boolean }) => Promise<unknown> | unknown;
  /** Offer --quiet (no progress or messages on stderr), passed to run. */
  quiet?: boolean;
  /** The config file read when --config is not given (an experiment's own; default: none). */
  defaultConfigFile?: string;
  examples?: readonly (readonly [command: string, what: string])[];
}

/** A yargs command for a stage: --config FILE plus one flag per setting; the handler loads the config and calls run. */
export function stageCommand<S extends ConfigSchema>(spec: StageCommandSpec<S>): CommandModule {
  return {
    command: spec.command,
    describe: spec.describe,
    builder: (y: Argv) => {
      let a = y.option('config', {
        type: 'string', requiresArg: true, defaultDescription: spec.defaultConfigFile ?? 'none',
        describe: 'JSON file of settings (the keys below, camelCase; relative paths in it: against its folder); flags override it',
      });
      if (spec.quiet) a = a.option('quiet', { type: 'boolean', describe: 'no progress bar or messages on stderr' });
      a = schemaOptions(a, spec.schema);
      for (const [cmd, what] of spec.examples ?? []) a = a.example(cmd, what);
      return a;
    },
    handler: handle(async (a: Record<string, unknown>) => {
      const file = typeof a['config'] === 'string' ? a['config'] : (spec.defaultConfigFile ?? null);
      await spec.run(loadConfig(spec.schema, file, flagsOf(a, spec.schema)), { quiet: a['quiet'] === true });
    }),
  };
}

/**
 * A stage command as a whole program (an experiment's runner: `node run.ts --config F --rloo.lr 1e-3`):
 * the same flags, --help and one-line errors as a `qrlhf` command.
 */
export async function runProgram<S extends ConfigSchema>(spec: StageCommandSpec<S>): Promise<void> {
  await program(spec.command).command({ ...stageCommand(spec), command: '$0' }).parseAsync();
}

/**
 * The yargs program every entry point starts from (the `qrlhf` bin and an experiment's runner):
 * strict flags, generated --help, and a parse failure or user error as one `qrlhf: …` line, exit 1.
 */
export function program(name: string): Argv {
  return yargs(hideBin(process.argv))
    .scriptName(name)
    .parserConfiguration(PARSER_CONFIGURATION)
    .strict()
    .help()
    .version(false)
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err) reportAndExit(err);
      process.stderr.write(`qrlhf: ${msg} (see --help)\n`);
      process.exit(1);
    });
}

import yargs from 'yargs';
import type { CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { reportAndExit } from './run.js';
import { PARSER_CONFIGURATION } from './options.js';
import { generateCommand } from './commands/generate.js';
import { convertCommand } from './commands/convert.js';
import { tokenizeCommand } from './commands/tokenize.js';
import { templateCommand } from './commands/template.js';
import { sftCommand } from './commands/sft.js';
import { qrmCommand } from './commands/qrm.js';
import { rlooCommand } from './commands/rloo.js';
import { benchCommand } from './commands/bench.js';
import { plotCommand } from './commands/plot.js';
import { serveCommand } from './commands/serve.js';

const commands: (CommandModule | null)[] = [
  generateCommand, convertCommand, tokenizeCommand, templateCommand, sftCommand, qrmCommand, rlooCommand, benchCommand, plotCommand, serveCommand,
];

let cli = yargs(hideBin(process.argv))
  .scriptName('qrlhf')
  .usage('$0 <command> [options]\n\nRisk-aware RLHF with quantile reward models.')
  .parserConfiguration(PARSER_CONFIGURATION)
  .strict()
  .demandCommand(1, 'name a command (see --help)')
  .recommendCommands()
  .help()
  .version(false)
  .wrap(Math.min(110, process.stdout.columns ?? 100))
  .fail((msg, err) => {
    if (err) reportAndExit(err);
    process.stderr.write(`qrlhf: ${msg} (see --help)\n`);
    process.exit(1);
  });
for (const c of commands) if (c) cli = cli.command(c);
await cli.parseAsync();

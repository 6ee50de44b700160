import type { CommandModule } from 'yargs';
import { program } from './options.js';
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

let cli = program('qrlhf')
  .usage('$0 <command> [options]\n\nRisk-aware RLHF with quantile reward models.')
  .demandCommand(1, 'name a command (see --help)')
  .recommendCommands();
for (const c of commands) if (c) cli = cli.command(c);
await cli.parseAsync();

import { stageCommand } from '../options.js';
import { TEMPLATE_SCHEMA, runTemplate } from '../stages/template.js';

export const templateCommand = stageCommand({
  command: 'template',
  describe: "Print a conversation as the model's chat template writes it (stdout exactly, no newline added)",
  schema: TEMPLATE_SCHEMA,
  run: runTemplate,
  examples: [['$0 template --model DIR --messages chat.json --generation-prompt', 'the prompt an instruct model continues']],
});

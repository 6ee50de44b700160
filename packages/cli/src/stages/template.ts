/**
 * `qrlhf template`: a conversation as the model's chat template writes it, on stdout exactly as
 * rendered (no newline added; other tools compare it byte for byte). The model folder needs only
 * its tokenizer_config.json (or chat_template.jinja): no weights, no tokenizer.json.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CHAT_TEMPLATE_FIELD, QrlhfError, defineConfig, readMessagesFile, requireKeys, resolveDialogueFormat, type ConfigOf,
} from '@qrlhf/core';

export const TEMPLATE_SCHEMA = defineConfig({
  model: { type: 'string', default: null, nullable: true, path: true, doc: 'model folder; only its tokenizer_config.json (or chat_template.jinja) is read (required)' },
  messages: { type: 'string', default: null, nullable: true, path: true, doc: 'JSON file: an array of {role, content} messages (required)' },
  generationPrompt: { type: 'boolean', default: false, doc: "end with the header that opens the assistant's reply (transformers' add_generation_prompt)" },
  chatTemplate: CHAT_TEMPLATE_FIELD,
  date: { type: 'string', default: null, nullable: true, doc: "the date the template's strftime_now sees, YYYY-MM-DD (null = today)" },
});
export type TemplateConfig = ConfigOf<typeof TEMPLATE_SCHEMA>;

/** A YYYY-MM-DD date as local midnight (strftime_now formats local time, as transformers does). */
function parseDate(s: string): Date {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  const d = m ? new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : null;
  if (!d || d.getMonth() !== Number(m![2]) - 1 || d.getDate() !== Number(m![3])) throw new QrlhfError(`--date: expected a date YYYY-MM-DD, got ${JSON.stringify(s)}`);
  return d;
}

/** The rendered text (what runTemplate prints). */
export function renderTemplate(config: TemplateConfig): string {
  const cfg = requireKeys(config, ['model', 'messages'], 'template');
  if (!existsSync(cfg.model)) throw new QrlhfError(`--model: ${cfg.model} does not exist`);
  const cfgPath = join(cfg.model, 'tokenizer_config.json');
  const hasConfig = existsSync(cfgPath);
  if (!hasConfig && !existsSync(join(cfg.model, 'chat_template.jinja')) && cfg.chatTemplate === 'auto') {
    throw new QrlhfError(`${cfg.model}: no tokenizer_config.json (the chat template and special tokens are read from it)`);
  }
  let tokenizerConfig: Record<string, unknown> = {};
  if (hasConfig) {
    try {
      tokenizerConfig = JSON.parse(readFileSync(cfgPath, 'utf8').replace(/^\uFEFF/, '')) as Record<string, unknown>;
    } catch (e) {
      throw new QrlhfError(`${cfgPath}: not valid JSON (${(e as Error).message})`);
    }
  }
  const messages = readMessagesFile(cfg.messages);
  const now = cfg.date === null ? new Date() : parseDate(cfg.date);
  const format = resolveDialogueFormat(cfg.chatTemplate, { tokenizerConfig, dir: cfg.model, where: cfgPath }, { now });
  return format.text(messages, cfg.generationPrompt);
}

export function runTemplate(config: TemplateConfig): void {
  process.stdout.write(renderTemplate(config));
}

import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'tokenize' command.
export const tokenizeCommand: CommandModule | null = null;

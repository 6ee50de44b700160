import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'generate' command.
export const generateCommand: CommandModule | null = null;

import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'convert' command.
export const convertCommand: CommandModule | null = null;

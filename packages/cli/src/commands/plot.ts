import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'plot' command.
export const plotCommand: CommandModule | null = null;

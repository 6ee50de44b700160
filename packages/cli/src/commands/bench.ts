import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'bench' command.
export const benchCommand: CommandModule | null = null;

import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'rloo' command.
export const rlooCommand: CommandModule | null = null;

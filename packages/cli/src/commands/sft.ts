import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'sft' command.
export const sftCommand: CommandModule | null = null;

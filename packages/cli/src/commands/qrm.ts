import type { CommandModule } from 'yargs';

// Placeholder: filled in by the issue that owns the 'qrm' command.
export const qrmCommand: CommandModule | null = null;

export { handle, reportAndExit } from './run.js';
export { stageCommand, runProgram, schemaOptions, flagsOf, type StageCommandSpec } from './options.js';

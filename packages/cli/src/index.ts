export { handle, reportAndExit } from './run.js';

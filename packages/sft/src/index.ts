export {
  SFT_SCHEMA, sftDefaults, loadSftConfigFile,
  applySftOverrides, loadSftConfig, checkSftConfig, type SftConfig, type SftConfigKey,
} from './config.js';
export { runSft, evaluateSft, readMetrics, type SftHooks, type SftResult, type SftDataSummary } from './train.js';
export {
  tokenizeExample, tokenizeExamples, splitHeldOut, ExampleStream, padBatch, lossTokenCount,
  type SftTokenizer, type SftExample, type TokenizeStats, type PaddedBatch,
} from './data.js';
export { maskedNllSum, maskedCorrect } from './loss.js';

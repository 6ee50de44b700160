/**
 * Every kernel qrlhf registers on (or replaces in) a tfjs backend, one file per kernel, all
 * registered from this one list. Set QRLHF_STOCK_KERNELS=1 to keep tfjs's own kernels (for
 * before/after benchmarks); the list is then not registered.
 */
import * as tf from '@tensorflow/tfjs';
import { batchMatMulConfig } from './BatchMatMul.js';
import { fusedMatMulConfig } from './_FusedMatMul.js';
import { unsortedSegmentSumConfig } from './UnsortedSegmentSum.js';
import { splitVConfig } from './SplitV.js';
import { concatConfig } from './Concat.js';
import { identityConfig } from './Identity.js';
import { gatherV2Config } from './GatherV2.js';
import { captureStock } from './stock.js';
import { decodeAttentionCanRun, decodeAttentionConfig } from './DecodeAttention.js';
import { registerOpKernel } from '../ops.js';

export const WASM_KERNELS: readonly tf.KernelConfig[] = [
  batchMatMulConfig, fusedMatMulConfig, unsortedSegmentSumConfig, splitVConfig, concatConfig, identityConfig, gatherV2Config,
];

/** Kernels of tfjs's wasm backend that qrlhf's kernels call (captured before any replacement). */
const STOCK_USED = [
  'BatchMatMul', '_FusedMatMul', 'Transpose', 'Add', 'Relu', 'Relu6', 'Elu', 'Sigmoid', 'LeakyRelu', 'Prelu',
  'SplitV', 'Concat', 'Identity', 'GatherV2',
];

let registered = false;

export function stockKernelsRequested(): boolean {
  const v = process.env['QRLHF_STOCK_KERNELS'];
  return v !== undefined && v !== '' && v !== '0';
}

/** Registers the list on the wasm backend (once). Must run before the backend initialises.
 *  The kernels of qrlhf's own ops (../ops.ts) replace nothing of tfjs's, so they are registered
 *  even with QRLHF_STOCK_KERNELS=1. */
export function registerWasmKernels(): boolean {
  registerOpKernel(decodeAttentionConfig, decodeAttentionCanRun);
  if (registered) return true;
  if (stockKernelsRequested()) return false;
  for (const name of STOCK_USED) captureStock(name);
  for (const k of WASM_KERNELS) {
    if (tf.getKernel(k.kernelName, 'wasm')) tf.unregisterKernel(k.kernelName, 'wasm');
    tf.registerKernel(k);
  }
  registered = true;
  return true;
}

export function wasmKernelsRegistered(): boolean {
  return registered;
}

export { matMulStats } from './BatchMatMul.js';
export { nativeInfo, loadNative, setNativeEnabled, nativeAddonPath, type NativeInfo } from './native.js';
export { decodeAttentionStats } from './DecodeAttention.js';

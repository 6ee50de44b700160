/**
 * _FusedMatMul for the wasm backend: the product takes qrlhf's BatchMatMul (XNNPACK in every
 * layout), then the bias and the activation are applied with tfjs's own wasm kernels
 * (broadcasting Add; Relu, Relu6, Elu, Sigmoid, LeakyRelu, Prelu). Besides speed this also fixes
 * tfjs's fused kernel, which gets a batched left operand with a shared right operand and a bias
 * wrong (it broadcasts the batch only in its naive loop, not with a bias).
 */
import * as tf from '@tensorflow/tfjs';
import { batchMatMulImpl } from './BatchMatMul.js';
import { runStock, setupStock, type KernelArgs } from './stock.js';
import type { TensorInfoLike } from './heap.js';

const ACTIVATIONS: Record<string, string> = {
  relu: 'Relu', relu6: 'Relu6', elu: 'Elu', sigmoid: 'Sigmoid', leakyrelu: 'LeakyRelu', prelu: 'Prelu',
};

function fusedMatMul(args: KernelArgs): TensorInfoLike {
  const { backend } = args;
  const act = (args.attrs?.['activation'] as string | undefined) ?? 'linear';
  const bias = args.inputs['bias'];
  const alphas = args.inputs['preluActivationWeights'];
  if (act !== 'linear' && !(act in ACTIVATIONS)) return runStock('_FusedMatMul', args);
  let y = batchMatMulImpl({ inputs: { a: args.inputs['a']!, b: args.inputs['b']! }, backend, attrs: args.attrs });
  const step = (next: TensorInfoLike): void => {
    backend.disposeData(y.dataId);
    y = next;
  };
  if (bias) step(runStock('Add', { inputs: { a: y, b: bias }, backend }));
  if (act === 'prelu') {
    if (!alphas) throw new Error('_FusedMatMul: prelu activation needs preluActivationWeights');
    step(runStock('Prelu', { inputs: { x: y, alpha: alphas }, backend }));
  } else if (act === 'leakyrelu') {
    step(runStock('LeakyRelu', { inputs: { x: y }, backend, attrs: { alpha: args.attrs?.['leakyreluAlpha'] ?? 0.2 } }));
  } else if (act !== 'linear') {
    step(runStock(ACTIVATIONS[act]!, { inputs: { x: y }, backend }));
  }
  return y;
}

export const fusedMatMulConfig: tf.KernelConfig = {
  kernelName: tf._FusedMatMul,
  backendName: 'wasm',
  setupFunc: ((backend: unknown) => setupStock('_FusedMatMul', backend)) as unknown as tf.KernelSetupFunc,
  kernelFunc: fusedMatMul as unknown as tf.KernelFunc,
};

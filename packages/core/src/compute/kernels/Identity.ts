/**
 * Identity for the wasm backend that shares the input's memory (one more reference to it), as
 * tfjs's cpu backend does, instead of copying it: the gradient tape runs Identity on every tensor
 * it saves (hundreds per training step). qrlhf never writes into a tensor's memory in place, so
 * sharing is safe; strings keep tfjs's own kernel.
 */
import * as tf from '@tensorflow/tfjs';
import { runStock, type KernelArgs } from './stock.js';
import type { TensorInfoLike } from './heap.js';

interface RefCounted {
  dataIdMap: { get(d: object): { refCount: number } | undefined };
}

function identity(args: KernelArgs): TensorInfoLike {
  const x = args.inputs['x']!;
  const rec = (args.backend as unknown as RefCounted).dataIdMap.get(x.dataId);
  if (x.dtype === 'string' || !rec) return runStock('Identity', args);
  rec.refCount++;
  return { dataId: x.dataId, shape: x.shape.slice(), dtype: x.dtype };
}

export const identityConfig: tf.KernelConfig = {
  kernelName: tf.Identity,
  backendName: 'wasm',
  kernelFunc: identity as unknown as tf.KernelFunc,
};

import * as tf from '@tensorflow/tfjs';

/** Tensors of checkpoint k: ~3 MB in all, each element a function of k and its index. */
export function checkpointTensors(k: number): { variables: Record<string, tf.Tensor>; optimizer: Record<string, tf.Tensor> } {
  const fill = (n: number, salt: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = k * 1000 + salt + i * 1e-3;
    return a;
  };
  return {
    variables: {
      'layers.0.w': tf.tensor(fill(300 * 400, 1), [300, 400]),
      'layers.0.b': tf.tensor(fill(400, 2), [400]),
      count: tf.tensor(new Int32Array([k, -k]), [2], 'int32'),
    },
    optimizer: {
      'm.layers.0.w': tf.tensor(fill(300 * 400, 3), [300, 400]),
      'v.layers.0.w': tf.tensor(fill(300 * 400, 4), [300, 400]),
      'm.layers.0.b': tf.tensor(fill(400, 5), [400]),
      'v.layers.0.b': tf.tensor(fill(400, 6), [400]),
    },
  };
}

import * as tf from '@tensorflow/tfjs';
import { check } from '../errors.js';

/** sqrt(Σ over all tensors of Σ g²), the global L2 norm of a set of gradients (one read, async for GPU backends). */
export async function globalNorm(grads: Record<string, tf.Tensor>): Promise<number> {
  const ts = Object.values(grads);
  if (ts.length === 0) return 0;
  // A chain of adds, not one AddN: webgpu's AddN binds every input as a storage buffer and fails
  // past the device's limit (8 by default; a LoRA adapter has dozens of gradients).
  const sq = tf.tidy(() => ts.map((g) => tf.sum(tf.square(tf.cast(g, 'float32')))).reduce((a, b) => tf.add(a, b)));
  const v = (await sq.data())[0]!;
  sq.dispose();
  return Math.sqrt(v);
}

/**
 * Scales all gradients together so that their global L2 norm is at most maxNorm (PyTorch's
 * clip_grad_norm_: coefficient min(1, maxNorm / (norm + 1e-6))). Returns NEW tensors (also when
 * nothing is clipped) and the norm before clipping; the inputs are not disposed. A non-finite
 * norm is returned as is with the gradients unchanged (copied): the caller should skip the step.
 */
export async function clipGradNorm(
  grads: Record<string, tf.Tensor>,
  maxNorm: number,
): Promise<{ grads: Record<string, tf.Tensor>; norm: number }> {
  check(maxNorm > 0, `clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const norm = await globalNorm(grads);
  const coef = Number.isFinite(norm) ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
  const out: Record<string, tf.Tensor> = {};
  for (const [name, g] of Object.entries(grads)) out[name] = coef === 1 ? g.clone() : tf.tidy(() => tf.mul(g, coef));
  return { grads: out, norm };
}

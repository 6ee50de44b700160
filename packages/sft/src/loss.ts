/**
 * The SFT loss (SPEC §3): token cross-entropy of the response tokens and the EOS given everything
 * before them. Position t of the logits predicts token t + 1, and it is scored when token t + 1
 * carries a 1 in the loss mask.
 */
import * as tf from '@tensorflow/tfjs';

function shifted(logits: tf.Tensor3D, ids: tf.Tensor2D, lossMask: tf.Tensor2D) {
  const [B, T, V] = logits.shape;
  return {
    pred: tf.slice(logits, [0, 0, 0], [B, T - 1, V]) as tf.Tensor3D,
    targets: tf.slice(ids, [0, 1], [B, T - 1]) as tf.Tensor2D,
    weights: tf.slice(lossMask, [0, 1], [B, T - 1]).toFloat() as tf.Tensor2D,
    V,
  };
}

/**
 * Sum over scored tokens of -log softmax(logits)[target], a scalar (divide by the number of
 * scored tokens for the mean). Written as logsumexp - logit[target], the target logit gathered
 * from the flattened logits (no [B, T, V] one-hot: the logits are the largest tensor already).
 */
export function maskedNllSum(logits: tf.Tensor3D, ids: tf.Tensor2D, lossMask: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const { pred, targets, weights, V } = shifted(logits, ids, lossMask);
    const n = targets.size;
    const lse = tf.logSumExp(pred, -1).reshape([n]);
    const flat = tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(V, 'int32')), targets.toInt().reshape([n]));
    const picked = tf.gather(pred.reshape([n * V]), flat);
    return tf.sum(tf.mul(tf.sub(lse, picked), weights.reshape([n]))) as tf.Scalar;
  });
}

/** Number of scored tokens whose argmax prediction equals the target, a scalar. */
export function maskedCorrect(logits: tf.Tensor3D, ids: tf.Tensor2D, lossMask: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const { pred, targets, weights } = shifted(logits, ids, lossMask);
    const hit = tf.equal(tf.argMax(pred, -1).toInt(), targets.toInt()).toFloat();
    return tf.sum(tf.mul(hit, weights)) as tf.Scalar;
  });
}

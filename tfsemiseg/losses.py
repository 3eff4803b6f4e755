"""Losses shared by all methods. Each returns a float32 scalar, a mean over the pixels that count.

Means are taken per replica; `SegmentationMethod.update_segmenter` divides by the number of
replicas, whose gradients tf.distribute sums.
"""

import tensorflow as tf

from tfsemiseg.data.io import IGNORE_LABEL


def masked_mean(values, mask):
    """Mean of `values` where `mask` is set; 0 if it is set nowhere.

    Under tf.distribute (inside a replica with others in sync) the count is that of the global
    batch: each replica returns its sum / (global count / replicas), so the replicas' mean, which
    their summed gradients (each divided by the number of replicas) follow, is the global batch's
    masked mean, as on one device. Per-replica means would weigh the pixels of a replica whose
    crops are mostly padding or void more.
    """
    mask = tf.cast(mask, tf.float32)
    count = tf.reduce_sum(mask)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        count = replica.all_reduce(tf.distribute.ReduceOp.MEAN, count)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), count)


def cross_entropy(labels, logits, ignore_label=IGNORE_LABEL):
    """Softmax cross-entropy averaged over pixels whose label is not `ignore_label`; 0 if none.

    labels: int [B, H, W]; logits: [B, H, W, C].
    """
    labels = tf.cast(labels, tf.int32)
    valid = labels != ignore_label
    logits = tf.cast(logits, tf.float32)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.where(valid, labels, 0), logits)
    return masked_mean(per_pixel, valid)


def ohem_cross_entropy(labels, logits, threshold=0.7, min_kept=200000, ignore_label=IGNORE_LABEL):
    """Online hard example mining (UniMatch's Cityscapes loss): cross-entropy averaged over the pixels
    whose probability of their label is at most max(threshold, the min_kept-th smallest such
    probability); every valid pixel when there are min_kept or fewer. Per replica, as the official code."""
    labels = tf.cast(labels, tf.int32)
    valid = labels != ignore_label
    logits = tf.cast(logits, tf.float32)
    safe = tf.where(valid, labels, 0)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits)
    prob = tf.where(valid, tf.exp(-per_pixel), 2.0)  # p of the label; invalid pixels sort last
    flat = tf.reshape(prob, [-1])
    count = tf.reduce_sum(tf.cast(valid, tf.int32))
    k = tf.minimum(min_kept, tf.size(flat))
    kth = -tf.math.top_k(-flat, k=k, sorted=True).values[k - 1]  # the min_kept-th smallest p
    kept = tf.logical_and(valid, prob <= tf.maximum(threshold, kth))
    kept = tf.where(count > min_kept, kept, valid)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(kept, per_pixel, 0.0)),
                                 tf.reduce_sum(tf.cast(kept, tf.float32)))


def confident_cross_entropy(targets, logits, confidence, threshold, counted):
    """FixMatch / UniMatch's unsupervised loss: cross-entropy against hard pseudo-labels `targets`
    [B, H, W] on the pixels whose `confidence` is >= `threshold`, summed and divided by the number
    of `counted` pixels (the non-padded ones), not by the number of confident ones (official code)."""
    logits = tf.cast(logits, tf.float32)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(targets, tf.int32), logits)
    confident = tf.cast(confidence >= threshold, tf.float32) * tf.cast(counted, tf.float32)
    # masked_mean's count is that of `counted`: the confident pixels' sum over all non-padded ones.
    return masked_mean(per_pixel * confident, counted)


def binary_cross_entropy(logits, target, mask=None):
    """Sigmoid BCE of per-pixel logits [B, H, W(, 1)] against a constant `target` (0 or 1) or a map."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape.rank == 4:
        logits = logits[..., 0]
    targets = tf.broadcast_to(tf.cast(target, tf.float32), tf.shape(logits))
    per_pixel = tf.nn.sigmoid_cross_entropy_with_logits(targets, logits)
    return masked_mean(per_pixel, tf.ones_like(per_pixel) if mask is None else mask)



def soft_cross_entropy(targets, logits, mask):
    """-sum_c targets_c log softmax(logits)_c, averaged over pixels where `mask` is set; 0 if none.

    targets: soft labels [B, H, W, C] (summing to 1); logits: [B, H, W, C]; mask: [B, H, W].
    """
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    per_pixel = -tf.reduce_sum(tf.cast(targets, tf.float32) * log_probs, axis=-1)
    return masked_mean(per_pixel, mask)


def multilabel_cross_entropy(logits, targets):
    """Sigmoid cross-entropy of image-level logits [B, K] against multi-hot targets, mean over B x K."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(targets, tf.float32),
                                                                   tf.cast(logits, tf.float32)))

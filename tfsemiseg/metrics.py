"""mIoU from a confusion matrix accumulated over a whole evaluation set.

`MeanIoU` is `keras.metrics.MeanIoU` (which owns the confusion matrix, its accumulation
and its all-reduce under tf.distribute) fed with logits, with ignore pixels excluded and
per-class IoU exposed. Classes absent from both ground truth and prediction are left out
of the mean (nanmean), as in the reference evaluation code.
"""

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.data.io import IGNORE_LABEL


class MeanIoU(keras.metrics.MeanIoU):
    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, name="miou", **kwargs):
        super().__init__(num_classes=num_classes, ignore_class=ignore_label, sparse_y_true=True,
                         sparse_y_pred=True, name=name, **kwargs)

    def update_state(self, labels, logits, sample_weight=None):
        """labels int [B, H, W]; logits or probabilities [B, H, W, C] (argmax is taken here)."""
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return super().update_state(tf.cast(labels, tf.int32), predictions, sample_weight)

    def per_class_iou(self):
        """numpy [C]: IoU per class, NaN for classes absent from both ground truth and prediction."""
        cm = np.asarray(keras.ops.convert_to_numpy(self.total_cm), np.float64)
        inter = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / union, np.nan)


def per_image_miou(predictions, references, num_classes, ignore_label=IGNORE_LABEL):
    """mIoU of each image [B] of `predictions` against `references` (int [B, H, W]), batched.

    Classes absent from both maps of an image are left out of its mean; pixels whose
    reference is `ignore_label` are not counted. ST++ scores an image's stability with
    this, the final checkpoint's prediction serving as the reference.
    """
    valid = tf.cast(references != ignore_label, tf.float32)[..., None]
    p = tf.one_hot(tf.cast(predictions, tf.int32), num_classes) * valid
    r = tf.one_hot(tf.cast(references, tf.int32), num_classes) * valid
    inter = tf.reduce_sum(p * r, axis=[1, 2])
    union = tf.reduce_sum(p, axis=[1, 2]) + tf.reduce_sum(r, axis=[1, 2]) - inter
    present = tf.cast(union > 0, tf.float32)
    iou = tf.math.divide_no_nan(inter, union)
    return tf.math.divide_no_nan(tf.reduce_sum(iou * present, -1), tf.reduce_sum(present, -1))

"""The one place where images are normalised: datasets and exported models take raw pixels."""

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable("tfsemiseg")
class ImageNormalization(layers.Layer):
    """Maps raw RGB pixels in [0, 255] to what a backbone's weights expect.

    `caffe`: RGB -> BGR minus the ImageNet mean (keras.applications ResNet, DeepLab-v2);
    `torch`: x / 255, minus mean, over std (torchvision, ST++ / UniMatch);
    `lite`: (x - 127) / 128 (EfficientNet-Lite's ImageNet training).
    The one place where normalisation happens: datasets and exported models take raw pixels.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "lite"):
            raise ValueError(f"ImageNormalization mode must be 'caffe', 'torch' or 'lite', got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = tf.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return x[..., ::-1] - tf.constant([103.939, 116.779, 123.68], self.compute_dtype)
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        mean = tf.constant([255.0 * m for m in self.MEAN], self.compute_dtype)
        std = tf.constant([255.0 * s for s in self.STD], self.compute_dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable("tfsemiseg")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, computed by TensorFlow's fused kernel where it can be.

    Keras 3 normalises with separate ops on the TensorFlow backend (the moments, then
    `tf.nn.batch_normalization`): about a dozen elementwise passes over the activations forward and
    backward per layer (keras-team/keras-core#225). For 4-D channels-last inputs this layer calls
    `tf.compat.v1.nn.fused_batch_norm` instead: one op forward and one backward (oneDNN's on CPU,
    cuDNN's on GPU; bfloat16 / float16 activations stay in their dtype, the statistics are float32).
    Same variables and the same results as Keras' layer up to rounding: the moving variance is
    updated with the biased batch variance, as Keras does. Masks, renorm, `synchronized=True`
    (statistics over all replicas) and other axes take Keras' own path.

    Args:
        Those of `keras.layers.BatchNormalization`.

    Example:

    >>> import numpy as np
    >>> layer = BatchNormalization(epsilon=1e-3)
    >>> layer(np.ones((2, 4, 4, 3), "float32"), training=True).shape
    TensorShape([2, 4, 4, 3])
    """

    def _fusable(self, inputs, mask):
        return (len(inputs.shape) == 4 and self.axis in (-1, 3) and mask is None and not self.renorm
                and not self.synchronized)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (tf.float16, tf.bfloat16, tf.float32) else tf.cast(inputs, tf.float32)
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones_like(self.moving_mean)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros_like(self.moving_mean)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=self.epsilon, is_training=True)
            # The kernel returns the unbiased (n - 1) variance; Keras' moving variance uses the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False)
        return tf.cast(outputs, self.compute_dtype)

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

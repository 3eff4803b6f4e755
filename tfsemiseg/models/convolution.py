"""Dilated convolution without TensorFlow's space-to-batch detour."""

import functools

import keras
import tensorflow as tf
from keras import layers


@functools.cache
def native_dilation_supported():
    """Whether TensorFlow's Conv2D op and its gradients accept dilation rates > 1 here: with oneDNN
    (the default on x86 CPUs) and on GPUs (cuDNN) they do; TensorFlow's own CPU kernels
    (TF_ENABLE_ONEDNN_OPTS=0) fail with "do not yet support dilation rates larger than 1"."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API tells whether oneDNN is on
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def cpu_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU computes in bfloat16 (AVX-512 BF16 or AMX): True, False, or None when it
    cannot be told (no /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


@keras.saving.register_keras_serializable("tfsemiseg")
class Conv2D(layers.Conv2D):
    """`keras.layers.Conv2D` whose dilated convolutions are one Conv2D op with a dilation rate.

    Keras calls `tf.nn.convolution`, which turns a dilated convolution into SpaceToBatchND, a
    stride-1 convolution on rate^2 small images, and BatchToSpaceND (a workaround from when CPU
    kernels had no dilated gradients). oneDNN and cuDNN compute dilated convolutions directly: on
    these CPUs twice as fast for a ResNet's rate-4 conv5 (forward and backward, 2 x 21 x 21 x 512).
    Same variables and results up to rounding; strided, grouped or channels-first convolutions, and
    builds without dilated CPU gradients, take Keras' path.

    Args:
        Those of `keras.layers.Conv2D`.

    Example:

    >>> import numpy as np
    >>> Conv2D(8, 3, dilation_rate=4, padding="same")(np.ones((1, 21, 21, 16), "float32")).shape
    TensorShape([1, 21, 21, 8])
    """

    def _native(self):
        # oneDNN has no bfloat16 kernels without AVX-512: TensorFlow's own then run, without dilated gradients.
        emulated_bfloat16 = (self.compute_dtype == "bfloat16" and not tf.config.list_physical_devices("GPU")
                             and cpu_bfloat16() is False)
        return (max(self.dilation_rate) > 1 and max(self.strides) == 1 and self.groups == 1
                and self.data_format == "channels_last" and native_dilation_supported() and not emulated_bfloat16)

    def convolution_op(self, inputs, kernel):
        if not self._native():
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(inputs, kernel, strides=1, padding=self.padding.upper(),
                            dilations=list(self.dilation_rate))


@keras.saving.register_keras_serializable("tfsemiseg")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that computes in float32 under bfloat16 mixed precision on a CPU.

    oneDNN's bfloat16 depthwise gradients are slower than its float32 ones: in the CamVid setting's
    step (EfficientNet-Lite0, DeepLab-v3+, crop 224, batch 8; `benchmarks/benchmark.py
    --setting=camvid --method=suponly --profile=DIR`) the 16 depthwise weight gradients took 0.399 s
    a step in bfloat16 against 0.131 s in float32, the input gradients 0.147 against 0.055 s, which
    cancelled every gain of the bfloat16 dense convolutions. So on a CPU the layer casts its input and
    kernel to float32 and its output back to the compute dtype (the casts are cheap: a depthwise
    convolution's tensors are a block's narrowest). Same variables; GPUs, float32 and float16 policies
    take Keras' path.

    Args:
        Those of `keras.layers.DepthwiseConv2D`.

    Example:

    >>> import numpy as np
    >>> DepthwiseConv2D(3, padding="same")(np.ones((1, 8, 8, 4), "float32")).shape
    TensorShape([1, 8, 8, 4])
    """

    def _float32_on_cpu(self):
        return self.compute_dtype == "bfloat16" and not tf.config.list_physical_devices("GPU")

    def call(self, inputs):
        if not self._float32_on_cpu():
            return super().call(inputs)
        outputs = keras.ops.depthwise_conv(
            tf.cast(inputs, tf.float32), tf.cast(self.kernel, tf.float32), strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format)
        if self.use_bias:
            shape = [-1] + [1] * len(self.kernel_size) if self.data_format == "channels_first" else [-1]
            outputs = outputs + tf.reshape(tf.cast(self.bias, tf.float32), shape)
        outputs = tf.cast(outputs, self.compute_dtype)
        return self.activation(outputs) if self.activation is not None else outputs

"""Segmentation heads: DeepLab-v2 ASPP-sum, DeepLab-v3+ (ASPP + decoder), PSPNet pyramid pooling.

Head layers are named `head_*`; optimisers give them a larger learning rate (`head_lr_mult`).
"""

import keras
import tensorflow as tf
from keras import layers

from tfsemiseg.models.convolution import Conv2D
from tfsemiseg.models.normalization import BatchNormalization


def resize_like(x, reference, align_corners=True):
    """Bilinearly resize `x` [B, h, w, C] to the spatial size of `reference`, keeping x's dtype."""
    out = tf.raw_ops.ResizeBilinear(images=x, size=tf.shape(reference)[1:3], align_corners=align_corners,
                                    half_pixel_centers=not align_corners)
    return tf.cast(out, x.dtype)


@keras.saving.register_keras_serializable("tfsemiseg")
class ResizeTo(layers.Layer):
    """Bilinearly resize `x` to the spatial size of `reference` (align_corners=True, as the
    PyTorch reference code). Works on dynamic shapes, so models accept any input size."""

    def __init__(self, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = align_corners

    def call(self, x, reference):
        return resize_like(x, reference, self.align_corners)

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "align_corners": self.align_corners}


@keras.saving.register_keras_serializable("tfsemiseg")
class AdaptiveAvgPool(layers.Layer):
    """Average pooling to a fixed `bins` x `bins` grid for any input size (PSPNet's pyramid)."""

    def __init__(self, bins, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def call(self, x):
        return tf.cast(tf.image.resize(x, (self.bins, self.bins), method="area"), x.dtype)

    def compute_output_shape(self, shape):
        return (shape[0], self.bins, self.bins, shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def _conv_bn_relu(x, filters, kernel, name, dilation=1):
    x = Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False,
               name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def aspp_v2(c4, num_classes, rates=(6, 12, 18, 24)):
    """DeepLab-v2 classifier: sum of 3x3 convs at `rates` on the last features, N(0, 0.01) init."""
    branches = [
        Conv2D(num_classes, 3, padding="same", dilation_rate=r, name=f"head_aspp_{r}",
               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(c4)
        for r in rates
    ]
    return layers.Add(name="head_aspp_sum")(branches)


def aspp_v3(x, rates, filters=256, dropout=0.5):
    """ASPP with image pooling (DeepLab-v3): 1x1, three dilated 3x3, pooled; concat; 1x1 projection."""
    branches = [_conv_bn_relu(x, filters, 1, "head_aspp_0")]
    branches += [_conv_bn_relu(x, filters, 3, f"head_aspp_{r}", dilation=r) for r in rates]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="head_aspp_pool")(x)
    pooled = _conv_bn_relu(pooled, filters, 1, "head_aspp_pool")
    branches.append(ResizeTo(name="head_aspp_pool_resize")(pooled, x))
    x = layers.Concatenate(name="head_aspp_concat")(branches)
    x = _conv_bn_relu(x, filters, 1, "head_aspp_project")
    return layers.SpatialDropout2D(dropout, name="head_aspp_dropout")(x) if dropout else x


def deeplabv3plus(c1, c4, num_classes, rates, dropout=True, channels=256):
    """DeepLab-v3+ head (as ST++): ASPP on c4, upsample to c1, fuse with a 48-channel c1 projection.

    `channels` is 256 in the paper (48 for the c1 projection, scaled with it); smaller for tiny models.
    Returns (decoder features [stride 4, `channels`], logits at stride 4).
    """
    x = aspp_v3(c4, rates, filters=channels, dropout=0.5 if dropout else 0.0)
    x = ResizeTo(name="head_decoder_upsample")(x, c1)
    low = _conv_bn_relu(c1, max(channels * 3 // 16, 8), 1, "head_decoder_reduce")
    x = layers.Concatenate(name="head_decoder_concat")([x, low])
    x = _conv_bn_relu(x, channels, 3, "head_decoder_fuse1")
    x = _conv_bn_relu(x, channels, 3, "head_decoder_fuse2")
    features = layers.Identity(name="head_decoder_features")(x)
    if dropout:
        x = layers.Dropout(0.1, name="head_dropout")(x)
    return features, layers.Conv2D(num_classes, 1, name="head_classifier")(x)


def psp(c4, num_classes, bins=(1, 2, 3, 6), filters=512):
    """PSPNet pyramid pooling module; returns (fused features, logits at the feature stride)."""
    branches = [c4]
    for b in bins:
        y = AdaptiveAvgPool(b, name=f"head_psp_pool{b}")(c4)
        y = _conv_bn_relu(y, filters, 1, f"head_psp_{b}")
        branches.append(ResizeTo(name=f"head_psp_{b}_resize")(y, c4))
    x = layers.Concatenate(name="head_psp_concat")(branches)
    x = _conv_bn_relu(x, filters, 3, "head_psp_fuse")
    features = layers.Identity(name="head_decoder_features")(x)
    x = layers.Dropout(0.1, name="head_dropout")(x)
    return features, layers.Conv2D(num_classes, 1, name="head_classifier")(x)

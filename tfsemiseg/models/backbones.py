"""Dilated ResNet backbones whose layers match `keras.applications` so ImageNet weights load.

`resnet(x, "resnet101", output_stride=8)` builds ResNet-v1 (stride in the first 1x1 of a
bottleneck, as the Caffe / DeepLab-v2 ResNet and `keras.applications.ResNet101`) with the
strides of the last stages replaced by dilation: OS 16 dilates conv5 by 2, OS 8 dilates conv4
by 2 and conv5 by 4. Dilation does not change any weight shape, so `load_imagenet_weights`
copies a `keras.applications` model into the dilated one layer by layer, by name.

Layer names follow keras.applications (`conv1_conv`, `conv4_block23_3_bn`, ...), and the
four stage outputs are exposed as Identity layers named `c1`..`c4` (strides 4, 8, 16/8, 32/16/8)
for decoders, Grad-CAM and hypercolumns.

`tiny` and `small` are basic-block ResNets for tests, the demo and CPU-sized runs.

`backbone_features`, `normalization_mode` and `load_weights` are the entry points for every
backbone name, the ResNets here and EfficientNet-Lite (`efficientnet_lite.py`).
"""

import keras
from keras import layers

from tfsemiseg.models import efficientnet_lite
from tfsemiseg.models.convolution import Conv2D
from tfsemiseg.models.normalization import BatchNormalization, ImageNormalization  # noqa: F401  (re-exported)

SPECS = {
    # name: (block type, blocks per stage, widths per stage, stem width)
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64),
    "small": ("basic", (2, 2, 2, 2), (32, 64, 128, 256), 32),
    "tiny": ("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16),
}
APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}
BN_EPSILON = 1.001e-5


def _conv_bn(x, filters, kernel, name, stride=1, dilation=1, use_bias=True, relu=True):
    x = Conv2D(filters, kernel, strides=stride, dilation_rate=dilation, padding="same",
               use_bias=use_bias, name=f"{name}_conv")(x)
    x = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _bottleneck(x, filters, stride, dilation, shortcut_conv, name, use_bias):
    shortcut = x
    if shortcut_conv:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv")(x)
        shortcut = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    x = _conv_bn(x, filters, 1, f"{name}_1", stride=stride, use_bias=use_bias)
    x = _conv_bn(x, filters, 3, f"{name}_2", dilation=dilation, use_bias=use_bias)
    x = _conv_bn(x, 4 * filters, 1, f"{name}_3", use_bias=use_bias, relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _basic(x, filters, stride, dilation, shortcut_conv, name, use_bias):
    shortcut = x
    if shortcut_conv:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=use_bias, name=f"{name}_0_conv")(x)
        shortcut = BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    x = _conv_bn(x, filters, 3, f"{name}_1", stride=stride, dilation=dilation if stride == 1 else 1,
                 use_bias=use_bias)
    x = _conv_bn(x, filters, 3, f"{name}_2", dilation=dilation, use_bias=use_bias, relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stage_strides(output_stride):
    """(stride, dilation) of conv2..conv5 for an output stride of 8, 16 or 32."""
    if output_stride == 8:
        return [(1, 1), (2, 1), (1, 2), (1, 4)]
    if output_stride == 16:
        return [(1, 1), (2, 1), (2, 1), (1, 2)]
    if output_stride == 32:
        return [(1, 1), (2, 1), (2, 1), (2, 1)]
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def resnet(x, name="resnet101", output_stride=8, use_bias=True):
    """Apply a dilated ResNet to normalised images `x`; returns [c1, c2, c3, c4].

    `use_bias=True` matches keras.applications (needed to load its ImageNet weights);
    `use_bias=False` is the Caffe / DeepLab original.
    """
    if name not in SPECS:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(SPECS)}.")
    kind, blocks, widths, stem = SPECS[name]
    block_fn = _bottleneck if kind == "bottleneck" else _basic
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(stem, 7, strides=2, use_bias=use_bias, name="conv1_conv")(x)
    x = BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    outputs = []
    in_width = stem
    for stage, ((stride, dilation), n, width) in enumerate(zip(stage_strides(output_stride), blocks, widths)):
        for i in range(n):
            out_width = 4 * width if kind == "bottleneck" else width
            shortcut_conv = i == 0 and (stride != 1 or in_width != out_width)
            x = block_fn(x, width, stride if i == 0 else 1, dilation, shortcut_conv,
                         f"conv{stage + 2}_block{i + 1}", use_bias)
            in_width = out_width
        x = layers.Identity(name=f"c{stage + 1}")(x)  # on the path, so every endpoint is in the model
        outputs.append(x)
    return outputs


def names():
    return sorted(SPECS) + sorted(efficientnet_lite.VARIANTS)


def backbone_features(x, name, output_stride=8, use_bias=True):
    """[c1, c2, c3, c4] of backbone `name` (strides 4, 8, 16, 32 before dilation) on normalised `x`."""
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.efficientnet_lite(x, name, output_stride)
    if name not in SPECS:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {names()}.")
    return resnet(x, name, output_stride, use_bias=use_bias)


def normalization_mode(name):
    """How images are normalised for backbone `name`: as its ImageNet weights were trained."""
    if name in efficientnet_lite.VARIANTS:
        return "lite"
    return "caffe" if name in APPLICATIONS else "torch"


def load_weights(model, name, weights="imagenet"):
    """Pretrained weights into the backbone layers of `model`; returns the number of layers copied."""
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.load_imagenet_weights(model, name, weights)
    return load_imagenet_weights(model, name, weights)


def load_imagenet_weights(model, name="resnet101", weights="imagenet"):
    """Copy `keras.applications.<ResNet>(weights=weights)` into the backbone layers of `model`.

    `weights` is "imagenet" (downloaded by Keras once, then cached) or the path of a weights
    file saved from the keras.applications model. Returns the number of layers copied.
    """
    if name not in APPLICATIONS:
        raise ValueError(f"No ImageNet weights for backbone {name!r}; use one of "
                         f"{sorted(APPLICATIONS) + sorted(efficientnet_lite.VARIANTS)}, or --backbone_weights='' "
                         "to train from scratch.")
    reference = getattr(keras.applications, APPLICATIONS[name])(
        include_top=False, weights=weights, input_shape=(None, None, 3))
    copied = 0
    for ref_layer in reference.layers:
        if not ref_layer.weights:
            continue
        layer = model.get_layer(ref_layer.name)
        layer.set_weights(ref_layer.get_weights())
        copied += 1
    return copied

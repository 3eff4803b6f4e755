"""Segmenters as a backbone plus a head, both functional `keras.Model`s, composed into one model
from raw RGB in [0, 255] to logits at the input size.

    model = build_segmenter("deeplabv2", "resnet101", num_classes=21)          # ALSS
    model = build_segmenter("deeplabv3plus", "resnet50", 21, output_stride=16)  # ST++ / UniMatch
    logits = model(images)  # [B, H, W, C], float32 even under mixed precision

The segmenter's layers are `backbone` (images -> its four stages [c1, c2, c3, c4], strides 4, 8
and the output stride's 16 / 8 for c3 and c4), `head` (the four stages -> logits at the
feature stride) and the upsampling to the input size. A method that perturbs features runs the
two halves itself (UniMatch's feature perturbation, PseudoSeg's CAM):

    backbone, head = backbone_of(model), head_of(model)
    c1, c2, c3, c4 = backbone(images, training=True)
    logits = upsample(head([dropout(c1), c2, c3, dropout(c4)], training=True), images)

Both halves are Keras models with configs, so a saved `.keras` segmenter loads with
`keras.saving.load_model` and nothing else.
"""

import keras
import tensorflow as tf
from keras import layers

from tfsemiseg.models import backbones, heads

ARCHS = ("deeplabv2", "deeplabv3plus", "pspnet")
STAGES = ("c1", "c2", "c3", "c4")


def build_backbone(backbone, output_stride=8, use_bias=True, name="backbone"):
    """The backbone `backbone` as a model from raw images [B, H, W, 3] in [0, 255] to [c1, c2, c3, c4].

    Images are normalised inside, as its ImageNet weights were trained (`backbones.normalization_mode`).
    """
    inputs = keras.Input((None, None, 3), name="image")
    x = backbones.ImageNormalization(backbones.normalization_mode(backbone), name="normalize")(inputs)
    return keras.Model(inputs, backbones.backbone_features(x, backbone, output_stride, use_bias=use_bias),
                       name=name)


def build_head(arch, channels, num_classes, output_stride=8, aspp_rates=None, dropout=True, head_channels=256,
               name="head"):
    """The head `arch` as a model from the four stages (channel counts `channels`) to logits at the
    feature stride. Every head takes all four stages and uses the ones its paper does (v2 and PSPNet
    c4, v3+ c1 and c4); its layers are named `head_*` (the LR multiplier's rule)."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {ARCHS}.")
    stages = [keras.Input((None, None, c), name=n) for n, c in zip(STAGES, channels)]
    c1, _, _, c4 = stages
    if arch == "deeplabv2":
        logits = heads.aspp_v2(c4, num_classes, aspp_rates or (6, 12, 18, 24))
    elif arch == "deeplabv3plus":
        rates = aspp_rates or ((12, 24, 36) if output_stride == 8 else (6, 12, 18))
        _, logits = heads.deeplabv3plus(c1, c4, num_classes, rates, dropout=dropout, channels=head_channels)
    else:
        _, logits = heads.psp(c4, num_classes, filters=2 * head_channels)
    return keras.Model(stages, layers.Identity(name="head_logits")(logits), name=name)


def build_segmenter(arch, backbone, num_classes, output_stride=8, backbone_weights=None, freeze_bn=False,
                    use_bias=True, aspp_rates=None, dropout=True, head_channels=256, name=None):
    """Build a segmenter: `backbone_of(model)` then `head_of(model)`, upsampled to the input size.

    Args:
        arch: "deeplabv2" (ASPP-sum classifier, Chen et al. 2017), "deeplabv3plus" or "pspnet".
        backbone: "resnet50", "resnet101", "small", "tiny" (see `backbones.SPECS`) or
            "efficientnet_lite0" / "_lite1" / "_lite2" (`efficientnet_lite.VARIANTS`).
        num_classes: the logits' channels.
        output_stride: 8 or 16 (DeepLab-v2 and PSPNet use 8).
        backbone_weights: None, "imagenet", or a file: keras.applications ResNet weights, or the
            legacy PyTorch state dict of an EfficientNet-Lite (read without torch).
        freeze_bn: run the backbone's BatchNorm in inference mode with frozen parameters
            (the DeepLab-v2 setup, for pretrained backbones and small batches).
        use_bias: biases in backbone convolutions (keras.applications has them, Caffe does not).
        aspp_rates: dilation rates; default (6, 12, 18, 24) for v2, (12, 24, 36) at OS 8 and
            (6, 12, 18) at OS 16 for v3+.
        dropout: the v3+ head's dropouts (ASPP 0.5, decoder 0.1); UniMatch's head has none.
        head_channels: width of the v3+ ASPP / decoder (256 in the paper; PSPNet uses twice it).

    Example:
        >>> model = build_segmenter("deeplabv3plus", "tiny", 3, output_stride=16)
        >>> stages = backbone_of(model)(tf.zeros([1, 64, 64, 3]))
        >>> [int(s.shape[1]) for s in stages]
        [16, 8, 4, 4]
    """
    features = build_backbone(backbone, output_stride, use_bias)
    if backbone_weights:
        backbones.load_weights(features, backbone, backbone_weights)
    if freeze_bn:
        for layer in features.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    head = build_head(arch, [s.shape[-1] for s in features.outputs], num_classes, output_stride, aspp_rates,
                      dropout, head_channels)
    inputs = keras.Input((None, None, 3), name="image")
    logits = heads.ResizeTo(name="head_upsample")(head(features(inputs)), inputs)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=name or f"{arch}_{backbone}")


def backbone_of(segmenter):
    """The segmenter's backbone: raw images -> [c1, c2, c3, c4]."""
    return _part(segmenter, "backbone")


def head_of(segmenter):
    """The segmenter's head: [c1, c2, c3, c4] -> logits at the feature stride."""
    return _part(segmenter, "head")


def upsample(logits, images):
    """Head logits to the images' size (bilinear, align_corners) in float32, as the segmenter's output."""
    return tf.cast(heads.resize_like(logits, images), tf.float32)


def _part(segmenter, name):
    try:
        return segmenter.get_layer(name)
    except ValueError:
        raise ValueError(f"segmenter {segmenter.name!r} has no {name!r}: it was saved by a tfsemiseg before "
                         "segmenters were a backbone plus a head. Train it again (--overwrite).") from None


def is_head_variable(variable):
    """True for variables of head layers (named `head_*`), which train at `head_lr_mult` x lr."""
    return variable.path.split("/")[-2].startswith("head_") if "/" in variable.path else False


def build_from_config(cfg, num_classes, dropout=True):
    return build_segmenter(cfg.arch, cfg.backbone, num_classes, cfg.output_stride, cfg.backbone_weights,
                           cfg.freeze_bn, aspp_rates=cfg.aspp_rates or None, dropout=dropout,
                           head_channels=cfg.head_channels)

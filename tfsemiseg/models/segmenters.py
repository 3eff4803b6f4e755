"""Segmentation networks as functional `keras.Model`s: raw RGB in [0, 255] -> logits at input size.

    model = build_segmenter("deeplabv2", "resnet101", num_classes=21)          # ALSS
    model = build_segmenter("deeplabv3plus", "resnet50", 21, output_stride=16)  # ST++ / UniMatch
    logits = model(images)  # [B, H, W, C], float32 even under mixed precision

Named layers give later methods the features they need: `c1`..`c4` (backbone stages),
`head_decoder_features` (DeepLab-v3+ / PSPNet decoder), `head_logits` (logits at the
feature stride); see `feature_extractor`.
"""

import keras
from keras import layers

from tfsemiseg.models import backbones, heads

ARCHS = ("deeplabv2", "deeplabv3plus", "pspnet")


def build_segmenter(arch, backbone, num_classes, output_stride=8, backbone_weights=None, freeze_bn=False,
                    use_bias=True, aspp_rates=None, dropout=True, head_channels=256, name=None):
    """Build a segmenter.

    Args:
        arch: "deeplabv2" (ASPP-sum classifier, Chen et al. 2017), "deeplabv3plus" or "pspnet".
        backbone: "resnet50", "resnet101", "small", "tiny" (see `backbones.SPECS`) or
            "efficientnet_lite0" / "_lite1" / "_lite2" (`efficientnet_lite.VARIANTS`).
        output_stride: 8 or 16 (DeepLab-v2 and PSPNet use 8).
        backbone_weights: None, "imagenet", or a file: keras.applications ResNet weights, or the
            legacy PyTorch state dict of an EfficientNet-Lite (read without torch).
        freeze_bn: run the backbone's BatchNorm in inference mode with frozen parameters
            (the DeepLab-v2 setup, for pretrained backbones and small batches).
        use_bias: biases in backbone convolutions (keras.applications has them, Caffe does not).
        aspp_rates: dilation rates; default (6, 12, 18, 24) for v2, (12, 24, 36) at OS 8 and
            (6, 12, 18) at OS 16 for v3+.
        head_channels: width of the v3+ ASPP / decoder (256 in the paper; PSPNet uses twice it).
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {ARCHS}.")
    inputs = keras.Input((None, None, 3), name="image")
    x = backbones.ImageNormalization(backbones.normalization_mode(backbone), name="normalize")(inputs)
    c1, _, _, c4 = backbones.backbone_features(x, backbone, output_stride, use_bias=use_bias)
    if arch == "deeplabv2":
        logits = heads.aspp_v2(c4, num_classes, aspp_rates or (6, 12, 18, 24))
    elif arch == "deeplabv3plus":
        rates = aspp_rates or ((12, 24, 36) if output_stride == 8 else (6, 12, 18))
        _, logits = heads.deeplabv3plus(c1, c4, num_classes, rates, dropout=dropout, channels=head_channels)
    else:
        _, logits = heads.psp(c4, num_classes, filters=2 * head_channels)
    logits = layers.Identity(name="head_logits")(logits)
    logits = heads.ResizeTo(name="head_upsample")(logits, inputs)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    model = keras.Model(inputs, logits, name=name or f"{arch}_{backbone}")
    if backbone_weights:
        backbones.load_weights(model, backbone, backbone_weights)
    if freeze_bn:
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization) and not layer.name.startswith("head_"):
                layer.trainable = False
    return model


def is_head_variable(variable):
    """True for variables of head layers (named `head_*`), which train at `head_lr_mult` x lr."""
    return variable.path.split("/")[-2].startswith("head_") if "/" in variable.path else False


def feature_extractor(segmenter, names=("c4", "logits")):
    """A model from the segmenter's input to the named layers' outputs (e.g. c3, c4 for Grad-CAM)."""
    return keras.Model(segmenter.input, [segmenter.get_layer(n).output for n in names])


def build_from_config(cfg, num_classes):
    return build_segmenter(cfg.arch, cfg.backbone, num_classes, cfg.output_stride, cfg.backbone_weights,
                           cfg.freeze_bn, aspp_rates=cfg.aspp_rates or None, head_channels=cfg.head_channels)

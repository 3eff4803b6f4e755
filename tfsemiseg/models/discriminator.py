"""The fully convolutional discriminator of Hung et al. (BMVC 2018), Sec. 3.1.

Five 4x4 convolutions with stride 2 and padding 1 (C -> 64 -> 128 -> 256 -> 512 -> 1),
LeakyReLU(0.2) after the first four, no normalisation. Input: C-channel probability maps
(softmax of a prediction, or one-hot ground truth). Output: per-pixel logits upsampled
bilinearly to the input size, float32. For C = 21: 2,783,169 parameters.
Inputs must be at least 32 x 32 pixels (five stride-2 convolutions).
"""

import keras
from keras import layers

from tfsemiseg.models.heads import ResizeTo


def build_discriminator(num_classes, widths=(64, 128, 256, 512), name="discriminator"):
    inputs = keras.Input((None, None, num_classes), name="probabilities")
    x = inputs
    for i, w in enumerate([*widths, 1]):
        x = layers.ZeroPadding2D(1, name=f"pad{i + 1}")(x)
        x = layers.Conv2D(w, 4, strides=2, name=f"conv{i + 1}")(x)
        if i < len(widths):
            x = layers.LeakyReLU(0.2, name=f"leaky_relu{i + 1}")(x)
    x = ResizeTo(name="upsample")(x, inputs)
    x = layers.Activation("linear", dtype="float32", name="confidence_logits")(x)
    return keras.Model(inputs, x, name=name)

"""Joint image/label augmentation, per example, inside tf.data.

Images are float32 in [0, 255] (normalisation belongs to the model, see
`tfsemiseg.models.backbones.ImageNormalization`); labels are uint8 with IGNORE_LABEL (255)
where there is no ground truth, including padding and cutout boxes.

- `weak_augment`: random scale, pad (image 0, label ignore), random crop, horizontal flip.
- `ColorJitter`: the papers' colour jitter in tf.image ops, in two variants: torchvision's
  (ST++, UniMatch: brightness, contrast and saturation multiplied by U[0.5, 1.5], hue shifted by
  up to 0.25 of the circle) and PseudoSeg's TF one (brightness added, contrast per channel).
  Keras' `RandomColorJitter` is neither: its saturation factor f ~ U(-0.5, 0.5) scales
  saturation by f / (1 - f) clipped at 0, so half the views come out grey.
- `StrongAugment`: colour jitter, grayscale and Gaussian blur (Keras core layers) plus a cutout
  box filled with noise whose label becomes ignore. This is the ST++ recipe (Yang et al. 2022,
  Sec. 3.2), reused by later methods.
"""

import math

import keras
import tensorflow as tf

from tfsemiseg.data.io import IGNORE_LABEL


def resize(image, label, size):
    """Bilinear image, nearest-neighbour label, to `size` = (h, w)."""
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    if label is not None:
        label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return image, label


def random_scale(image, label, scale_range, base_size=None):
    """Resize by a factor drawn from `scale_range`; with `base_size` the long side becomes base_size*s."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = tf.random.uniform([], scale_range[0], scale_range[1])
    if base_size:
        factor = factor * base_size / tf.reduce_max(shape)
    size = tf.cast(tf.round(shape * factor), tf.int32)
    return resize(image, label, tf.maximum(size, 1))


def pad_to(image, label, size):
    """Pad bottom/right to at least `size` x `size`: image with 0, label with IGNORE_LABEL."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    pads = [[0, tf.maximum(size - h, 0)], [0, tf.maximum(size - w, 0)]]
    image = tf.pad(image, pads + [[0, 0]], constant_values=0.0)
    label = tf.pad(label, pads, constant_values=IGNORE_LABEL)
    return image, label


def random_crop(image, label, size):
    """The same random `size` x `size` window of image (any number of channels) and label."""
    stacked = tf.concat([image, tf.cast(label[..., None], tf.float32)], axis=-1)
    stacked = tf.image.random_crop(stacked, [size, size, image.shape[-1] + 1])
    return stacked[..., :-1], tf.cast(stacked[..., -1], tf.uint8)


def random_flip(image, label):
    flip = tf.random.uniform([]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    return image, label


def weak_augment(image, label, crop_size, scale_range=(0.5, 2.0), base_size=None):
    """Scale, pad, crop, flip. Returns float32 [crop, crop, 3] and uint8 [crop, crop]."""
    image, label = random_scale(image, label, scale_range, base_size)
    image, label = pad_to(image, label, crop_size)
    image, label = random_crop(image, label, crop_size)
    return random_flip(image, label)


def random_box(height, width, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)):
    """A [h, w] bool mask with one random box (with probability `p`), as the ST++ cutout sampler.

    Area ~ U(area) * H * W, aspect ~ U(ratio); redrawn until the box fits in the image.
    """
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)

    def draw(_bh, _bw):
        size = tf.random.uniform([], area[0], area[1]) * hf * wf
        r = tf.random.uniform([], ratio[0], ratio[1])
        return (tf.cast(tf.sqrt(size * r), tf.int32), tf.cast(tf.sqrt(size / r), tf.int32))

    bh, bw = tf.while_loop(lambda bh, bw: tf.logical_or(bh > height, bw > width), draw,
                           draw(0, 0), maximum_iterations=100)
    bh, bw = tf.minimum(bh, height), tf.minimum(bw, width)
    y0 = tf.random.uniform([], 0, height - bh + 1, dtype=tf.int32)
    x0 = tf.random.uniform([], 0, width - bw + 1, dtype=tf.int32)
    ys, xs = tf.range(height)[:, None], tf.range(width)[None, :]
    box = (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)
    return tf.logical_and(box, tf.random.uniform([]) < p)


def cutmix(box, source, target):
    """`target` with `source` inside `box` (a batch [B, H, W] bool / 0-1 mask): CutMix of images
    [B, H, W, 3], label maps or confidence maps [B, H, W], alike."""
    box = tf.cast(box, tf.bool)
    if target.shape.rank == 4:
        box = box[..., None]
    return tf.where(box, source, target)


def cutout(image, label, p=0.5, area=(0.02, 0.4), ratio=(0.3, 1 / 0.3)):
    """Fill a random box with uniform noise in [0, 255] and set its label to ignore."""
    box = random_box(tf.shape(image)[0], tf.shape(image)[1], p, area, ratio)
    noise = tf.random.uniform(tf.shape(image), 0.0, 255.0)
    image = tf.where(box[..., None], noise, image)
    label = tf.where(box, tf.constant(IGNORE_LABEL, label.dtype), label)
    return image, label


class ColorJitter:
    """Brightness, contrast, saturation and hue jitter in random order, on images in [0, 255].

    Each factor is drawn per call; each op clips to the value range, as both official codes do.
    `style="torchvision"` (ST++, UniMatch: `transforms.ColorJitter(0.5, 0.5, 0.5, 0.25)`):
        brightness  x * b,                               b ~ U[1 - 0.5, 1 + 0.5]
        contrast    c * x + (1 - c) * mean(gray(x)),      c ~ U[0.5, 1.5]
        saturation  s * x + (1 - s) * gray(x),           s ~ U[0.5, 1.5]
        hue         H + h (HSV, mod 1),                  h ~ U[-0.25, 0.25]
    `style="tf"` (PseudoSeg, `preprocess_utils.py`, images on [0, 1]):
        brightness  x + b,                               b ~ U[-0.5, 0.5]
        contrast    c * (x - mean_channel(x)) + mean_channel(x)   (tf.image.adjust_contrast)
        saturation  S * s (HSV)                          (tf.image.adjust_saturation)
        hue         as above                             (tf.image.adjust_hue)
    gray(x) = 0.299 R + 0.587 G + 0.114 B (the same weights in both libraries).
    """

    STYLES = ("torchvision", "tf")

    def __init__(self, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, style="torchvision"):
        if style not in self.STYLES:
            raise ValueError(f"ColorJitter style {style!r}: choose one of {self.STYLES}")
        self.brightness, self.contrast, self.saturation, self.hue, self.style = (
            brightness, contrast, saturation, hue, style)

    def sample(self):
        """(factors [4]: brightness, contrast, saturation, hue; order [4]: a permutation of 0..3)."""
        uniform = lambda low, high: tf.random.uniform([], low, high)  # noqa: E731
        if self.style == "torchvision":
            brightness = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        else:
            brightness = uniform(-self.brightness, self.brightness)
        factors = tf.stack([brightness, uniform(max(0.0, 1 - self.contrast), 1 + self.contrast),
                            uniform(max(0.0, 1 - self.saturation), 1 + self.saturation),
                            uniform(-self.hue, self.hue)])
        return factors, tf.random.shuffle(tf.range(4))

    def apply(self, image, factors, order):
        """Jitter `image` ([H, W, 3] in [0, 255]) with the given factors, ops in `order`."""
        x = tf.cast(image, tf.float32) / 255.0

        def gray(x):
            return tf.image.rgb_to_grayscale(x)

        if self.style == "torchvision":
            ops = [lambda x: x * factors[0],
                   lambda x: factors[1] * x + (1 - factors[1]) * tf.reduce_mean(gray(x)),
                   lambda x: factors[2] * x + (1 - factors[2]) * gray(x),
                   lambda x: tf.image.adjust_hue(x, factors[3])]
        else:
            ops = [lambda x: x + factors[0],
                   lambda x: tf.image.adjust_contrast(x, factors[1]),
                   lambda x: tf.image.adjust_saturation(x, factors[2]),
                   lambda x: tf.image.adjust_hue(x, factors[3])]
        for position in range(4):
            x = tf.switch_case(order[position], [lambda op=op, x=x: tf.clip_by_value(op(x), 0.0, 1.0) for op in ops])
        return x * 255.0

    def __call__(self, image):
        return self.apply(image, *self.sample())


class StrongAugment:
    """Photometric strong augmentation + cutout, for one example (image [H, W, 3], label [H, W]).

    Defaults are ST++'s: torchvision's ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8, grayscale
    p 0.2, Gaussian blur p 0.5 with sigma in [0.1, 2.0], cutout p 0.5 with a box of 2-40 % of the crop.
    """

    def __init__(self, jitter=(0.5, 0.5, 0.5, 0.25), p_jitter=0.8, p_gray=0.2, p_blur=0.5,
                 blur_sigma=(0.1, 2.0), p_cutout=0.5, cutout_area=(0.02, 0.4), cutout_ratio=(0.3, 1 / 0.3),
                 jitter_style="torchvision"):
        self.p_jitter, self.p_cutout, self.cutout_area, self.cutout_ratio = p_jitter, p_cutout, cutout_area, cutout_ratio
        self.p_gray, self.p_blur = p_gray, p_blur
        self.jitter = ColorJitter(*jitter, style=jitter_style)
        # Data augmentation, not model layers: float32 whatever the mixed-precision policy.
        self.gray = keras.layers.RandomGrayscale(factor=p_gray, dtype="float32")
        # PIL's GaussianBlur(radius=sigma) reaches about 3 sigma: a 13-tap kernel covers sigma = 2.
        self.blur = keras.layers.RandomGaussianBlur(
            factor=(p_blur, p_blur), kernel_size=2 * math.ceil(3 * blur_sigma[1]) + 1, sigma=blur_sigma,
            value_range=(0, 255), dtype="float32")

    @classmethod
    def pseudoseg(cls, crop_size):
        """PseudoSeg's strong view (Zou et al. 2021): its TF colour jitter always (brightness +-0.5,
        contrast and saturation 0.5, hue 0.25), no grayscale or blur, one cutout square of 100 px
        per 513 px of crop."""
        side = 100 / 513
        return cls(p_jitter=1.0, p_gray=0.0, p_blur=0.0, p_cutout=1.0, cutout_area=(side ** 2, side ** 2),
                   cutout_ratio=(1.0, 1.0), jitter_style="tf")

    @classmethod
    def unimatch(cls, jitter=(0.5, 0.5, 0.5, 0.25), p_gray=0.2, p_blur=0.5):
        """UniMatch's and FixMatch's strong view (Yang et al. 2023): ST++'s photometric part (torchvision
        jitter p 0.8, grayscale p 0.2, blur p 0.5) without cutout, which CutMix replaces."""
        return cls(jitter=tuple(jitter), p_gray=p_gray, p_blur=p_blur, p_cutout=0.0)

    def __call__(self, image, label):
        image = tf.cond(tf.random.uniform([]) < self.p_jitter, lambda: self.jitter(image), lambda: image)
        if self.p_gray:
            image = self.gray(image)
        if self.p_blur:
            image = self.blur(image)
        image = tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0)
        if not self.p_cutout:
            return image, label
        return cutout(image, label, self.p_cutout, self.cutout_area, self.cutout_ratio)

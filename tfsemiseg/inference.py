"""Inference helpers shared by evaluation and pseudo-labelling: padding, sliding windows, test-time augmentation.

All work on batches inside tf.function (dynamic shapes) and return class probabilities.
"""

import tensorflow as tf


def pad_to_multiple(images, multiple):
    """Pad [B, H, W, C] bottom/right with zeros to multiples of `multiple`; returns (padded, H, W)."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    ph, pw = (-h) % multiple, (-w) % multiple
    return tf.pad(images, [[0, 0], [0, ph], [0, pw], [0, 0]]), h, w


def padded_logits(segmenter, images, multiple=32):
    """Logits of a whole-image batch of any size: padded to a multiple of the network's stride, cropped back."""
    padded, h, w = pad_to_multiple(images, multiple)
    return segmenter(padded, training=False)[:, :h, :w]


def predict_logits(segmenter, images, image_scale=1.0, multiple=32):
    """Logits at the input's resolution for raw images of any size, preprocessed as in training.

    Images are resized by the run's `image_scale` (bilinear, as the data pipeline does), padded to
    a multiple of the network's stride, and the logits resized back (bilinear) to [B, H, W, C].
    The one inference path of `predict.py` and of the exported SavedModel, so both give the same
    labels for the same image.
    """
    images = tf.cast(images, tf.float32)
    size = tf.shape(images)[1:3]
    if image_scale != 1:
        scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * image_scale), tf.int32)
        images = tf.image.resize(images, tf.maximum(scaled, 1), method="bilinear")
        return tf.image.resize(padded_logits(segmenter, images, multiple), size, method="bilinear")
    return padded_logits(segmenter, images, multiple)


def sliding_window_scores(predict, images, window, stride):
    """Softmax scores summed over overlapping `window` x `window` crops (borders aligned), averaged.

    Works on dynamic shapes inside tf.function; images smaller than the window are padded.
    """
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [0, tf.maximum(window - h, 0)], [0, tf.maximum(window - w, 0)], [0, 0]])
    ph, pw = tf.shape(padded)[1], tf.shape(padded)[2]
    ny = (ph - window + stride - 1) // stride + 1
    nx = (pw - window + stride - 1) // stride + 1

    def body(i, total, count):
        y = tf.minimum((i // nx) * stride, ph - window)
        x = tf.minimum((i % nx) * stride, pw - window)
        scores = tf.nn.softmax(predict(padded[:, y:y + window, x:x + window]), axis=-1)
        pads = [[0, 0], [y, ph - y - window], [x, pw - x - window], [0, 0]]
        return i + 1, total + tf.pad(scores, pads), count + tf.pad(tf.ones_like(scores[..., :1]), pads)

    num_classes = predict(padded[:1, :window, :window]).shape[-1]
    total = tf.zeros(tf.concat([tf.shape(padded)[:3], [num_classes]], 0))
    _, total, count = tf.while_loop(lambda i, *_: i < ny * nx, body,
                                    (tf.constant(0), total, tf.zeros_like(total[..., :1])))
    return (total / count)[:, :h, :w]


def tta_scores(predict, images, scales=(0.5, 0.75, 1.0, 1.5, 2.0), flip=True):
    """Softmax averaged over rescaled (and horizontally flipped) copies of `images`, at input size.

    The ST / ST++ pseudo-labelling recipe (Yang et al. 2022): scales 0.5-2.0 x {identity, flip}.
    `predict` maps images [B, h, w, 3] to logits [B, h, w, C].
    """
    size = tf.shape(images)[1:3]
    total = 0.0
    for scale in scales:
        scaled_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        scaled = tf.image.resize(images, scaled_size, method="bilinear")
        views = [scaled, tf.reverse(scaled, [2])] if flip else [scaled]
        for i, view in enumerate(views):
            probs = tf.nn.softmax(predict(view), axis=-1)
            if i == 1:
                probs = tf.reverse(probs, [2])
            total += tf.image.resize(probs, size, method="bilinear")
    return total / (len(scales) * (2 if flip else 1))

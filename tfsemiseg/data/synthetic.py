"""A built-in segmentation dataset rendered with TensorFlow ops from (seed, index): no files.

Each image shows 2-4 objects on a textured background. An object's class is its *shape*
(disc, square, triangle, ring, cross); its colour only hints at it, as colour does in street
scenes (sky is mostly blue, trees mostly green): each class has its own band of hues
(`HUE_JITTER` either side of a centre, the five centres a fifth of the hue circle apart), but
saturation, brightness and a faint stripe vary, and the strongly striped background takes any
colour, so hue alone cannot tell an object from the background. Shapes are rotated and scaled,
and later objects occlude earlier ones.

So a small network learns the demo quickly (colour and edges), yet needs many labels to get
shapes and boundaries right: a model trained on a handful of labels is clearly worse than one
trained on all of them, and unlabelled images help (README, benchmarks/RESULTS.md). With random
hues instead (HUE_JITTER = 0.5, the original version) the class is given by shape alone; the
tiny network then stays near 30 mIoU for thousands of steps, which reads as broken.

Rendering is stateless (`tf.random.stateless_*`), so example `i` of a given seed is the same on
every machine and in every epoch.
"""

import math

import tensorflow as tf

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
MAX_OBJECTS = 4
HUE_JITTER = 0.1  # an object's hue: its class's centre (class / 5 of the circle) +- this (in turns)


def _uniform(seed, shape=(), lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _class_colour(seed, cls):
    """RGB in [0, 255] of hue (cls - 1) / 5 +- HUE_JITTER turns, saturation and value in [0.5, 1]."""
    s = tf.random.split(seed, 2)
    centre = tf.cast(cls - 1, tf.float32) / (NUM_CLASSES - 1)
    hue = tf.math.floormod(centre + _uniform(s[0], [], -HUE_JITTER, HUE_JITTER), 1.0)
    saturation, value = tf.unstack(_uniform(s[1], [2], 0.5, 1.0))
    return tf.image.hsv_to_rgb(tf.stack([hue, saturation, value])) * 255.0


def _texture(seed, yy, xx, size, contrast=255.0, cls=None):
    """A colour (random, or of class `cls`) and a second one up to `contrast` away, mixed by a
    random oriented grating, + noise."""
    s = tf.random.split(seed, 5)
    c1 = _uniform(s[0], [3], 0.0, 255.0) if cls is None else _class_colour(s[0], cls)
    c2 = tf.clip_by_value(c1 + _uniform(s[1], [3], -contrast, contrast), 0.0, 255.0)
    angle = _uniform(s[2], [], 0.0, math.pi)
    freq = _uniform(s[3], [], 2.0, 8.0) * 2 * math.pi / size
    wave = 0.5 + 0.5 * tf.sin(freq * (tf.cos(angle) * xx + tf.sin(angle) * yy))
    img = c1 * wave[..., None] + c2 * (1.0 - wave[..., None])
    return img + _uniform(s[4], [size, size, 3], -20.0, 20.0)


def _shape_mask(cls, u, v, r):
    """Boolean mask of shape `cls` (1..5) in its own rotated frame (u, v), radius r."""
    rad = tf.sqrt(u * u + v * v)
    disc = rad < r
    square = tf.maximum(tf.abs(u), tf.abs(v)) < 0.8 * r
    tri = tf.ones_like(disc)
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        tri = tf.logical_and(tri, u * math.cos(a) + v * math.sin(a) < 0.65 * r)
    ring = tf.logical_and(rad < r, rad > 0.55 * r)
    cross = tf.logical_or(tf.logical_and(tf.abs(u) < r / 3, tf.abs(v) < r),
                          tf.logical_and(tf.abs(v) < r / 3, tf.abs(u) < r))
    masks = tf.stack([disc, square, tri, ring, cross])
    return tf.gather(masks, cls - 1)


def render(index, seed=0, size=64):
    """Example `index`: {"image": uint8 [size, size, 3], "label": uint8 [size, size]}."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
    keys = tf.random.split(key, 2 + MAX_OBJECTS)
    yy, xx = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32), indexing="ij")
    image = _texture(keys[0], yy, xx, size, contrast=90.0)
    label = tf.zeros([size, size], tf.int32)
    num_objects = tf.random.stateless_uniform([], keys[1], 2, MAX_OBJECTS + 1, dtype=tf.int32)
    for k in range(MAX_OBJECTS):
        s = tf.random.split(keys[2 + k], 6)
        cls = tf.random.stateless_uniform([], s[0], 1, NUM_CLASSES, dtype=tf.int32)
        r = _uniform(s[1], [], 0.15, 0.3) * size
        cy, cx = tf.unstack(_uniform(s[2], [2], 0.15, 0.85) * size)
        theta = _uniform(s[3], [], 0.0, 2 * math.pi)
        u = tf.cos(theta) * (xx - cx) + tf.sin(theta) * (yy - cy)
        v = -tf.sin(theta) * (xx - cx) + tf.cos(theta) * (yy - cy)
        mask = tf.logical_and(_shape_mask(cls, u, v, r), k < num_objects)
        image = tf.where(mask[..., None], _texture(s[4], yy, xx, size, contrast=40.0, cls=cls), image)
        label = tf.where(mask, cls, label)
    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    return {"image": image, "label": tf.cast(label, tf.uint8)}

"""A built-in segmentation dataset rendered with TensorFlow ops from (seed, index): no files.

Each image shows 2-4 objects on a textured background. An object's class is given by its
*shape* (disc, square, triangle, ring, cross), never by its colour: objects and background
take random colours (objects faintly striped, the background strongly), shapes are rotated
and scaled, and later objects occlude earlier ones. A network must learn shape from context, so a model trained on a
handful of labels is clearly worse than one trained on all of them, and unlabelled images
help. Rendering is stateless (`tf.random.stateless_*`), so example `i` of a given seed is
the same on every machine and in every epoch.
"""

import math

import tensorflow as tf

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
MAX_OBJECTS = 4


def _uniform(seed, shape=(), lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _texture(seed, yy, xx, size, contrast=255.0):
    """A random colour and a second one up to `contrast` away, mixed by a random oriented grating, + noise."""
    s = tf.random.split(seed, 5)
    c1 = _uniform(s[0], [3], 0.0, 255.0)
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
        image = tf.where(mask[..., None], _texture(s[4], yy, xx, size, contrast=40.0), image)
        label = tf.where(mask, cls, label)
    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    return {"image": image, "label": tf.cast(label, tf.uint8)}

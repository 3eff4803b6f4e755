"""Reading and checking image / label files with `tf.io` (graph-safe, used inside tf.data).

Every label is converted on read to the library's single internal ignore value,
`IGNORE_LABEL = 255`, whatever the dataset uses on disk (CamVid's void is 11). Losses,
metrics and padding then only know one ignore value.

Bad input fails with an error that names the file: empty or non-image files, image/label
size mismatch and label values outside ``[0, num_classes)`` are caught by assertions inside
the pipeline; a file that TensorFlow cannot decode (truncated, corrupt body) is found by
`find_unreadable` when the pipeline raises (see `explain_data_errors`).
"""

import contextlib
import os

import numpy as np
import tensorflow as tf

IGNORE_LABEL = 255


class DataError(ValueError):
    """A dataset file or split is missing or malformed. The message names it."""


def _voc_colormap():
    """The PASCAL VOC palette (bit-interleaved colour of each class index)."""
    cmap = np.zeros((256, 3), dtype=np.int64)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP = _voc_colormap()


def _is_png_or_jpeg(contents):
    magic = tf.strings.substr(contents, 0, 4)
    return tf.logical_or(tf.equal(magic, b"\x89PNG"), tf.strings.substr(contents, 0, 2) == b"\xff\xd8")


def _read(path):
    contents = tf.io.read_file(path)
    check = tf.debugging.Assert(
        _is_png_or_jpeg(contents),
        ["Not a PNG or JPEG file (empty, corrupt or wrong format); replace or remove it from the split:", path],
    )
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def read_image(path):
    """uint8 [H, W, 3] from a PNG or JPEG file."""
    image = tf.io.decode_image(_read(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _palette_to_index(rgb):
    """Map VOC-palette colours back to class indices (colours outside the palette become 255)."""
    indices = list(range(21)) + [255]
    palette = tf.constant(VOC_COLORMAP[indices], tf.int32)  # [22, 3]
    matches = tf.reduce_all(tf.cast(rgb, tf.int32)[..., None, :] == palette, axis=-1)  # [H, W, 22]
    index = tf.gather(tf.constant(indices, tf.uint8), tf.argmax(matches, axis=-1))
    return tf.where(tf.reduce_any(matches, axis=-1), index, tf.constant(255, tf.uint8))


def read_label(path, num_classes, ignore_value=IGNORE_LABEL):
    """uint8 [H, W] class map; `ignore_value` on disk becomes IGNORE_LABEL.

    Single-channel PNGs are read as indices. Colour PNGs (VOC's palette files, which
    TensorFlow expands to RGB) are mapped back through the VOC palette.
    """
    decoded = tf.io.decode_png(_read(path), channels=0)
    label = tf.cond(tf.shape(decoded)[-1] == 1,
                    lambda: decoded[..., 0],
                    lambda: _palette_to_index(decoded[..., :3]))
    label.set_shape([None, None])
    label = tf.where(label == ignore_value, tf.constant(IGNORE_LABEL, tf.uint8), label)
    bad = tf.logical_and(label >= num_classes, label != IGNORE_LABEL)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"Label values outside [0, {num_classes}) that are not the ignore value {ignore_value}:",
         path, "values:", tf.unique(tf.boolean_mask(label, bad))[0],
         "Fix the label file, or set num_classes / ignore_value for this dataset."],
        summarize=10,
    )
    with tf.control_dependencies([check]):
        label = tf.identity(label)
    label.set_shape([None, None])
    return label


def read_pair(image_path, label_path, num_classes, ignore_value=IGNORE_LABEL):
    """{"image": uint8 [H, W, 3], "label": uint8 [H, W]} with a size check."""
    image = read_image(image_path)
    label = read_label(label_path, num_classes, ignore_value)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.shape(image)[:2] == tf.shape(label)),
        ["Image and label sizes differ:", image_path, tf.shape(image)[:2], label_path, tf.shape(label),
         "Every label map must have its image's height and width."],
    )
    with tf.control_dependencies([check]):
        return {"image": tf.identity(image), "label": tf.identity(label)}


def check_paths_exist(paths, what):
    """Raise DataError naming the first missing file (and how many are missing)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} {what} file(s) missing, first: {missing[0]}. "
                        "Check --data_dir and the split files.")


def find_unreadable(paths):
    """Return (path, error) of the first file TensorFlow cannot decode, or None. Eager, slow path."""
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
            return path, err.message.splitlines()[0]
    return None


@contextlib.contextmanager
def explain_data_errors(paths):
    """Turn an anonymous decoding error raised by a tf.data pipeline into one naming the file.

    Errors that already name a file (the assertions above) pass through unchanged.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        if "assertion failed" in err.message:
            raise DataError(err.message.split("\n")[0]) from None
        bad = find_unreadable(paths)
        if bad is None:
            raise
        raise DataError(f"Cannot decode {bad[0]} ({bad[1]}). The file is truncated or corrupt: "
                        "replace it or remove it from the split.") from None

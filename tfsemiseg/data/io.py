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
import re

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


def _palette_to_index(rgb, path):
    """Map VOC-palette colours back to class indices; a colour outside the palette is an error."""
    indices = list(range(21)) + [255]
    palette = tf.constant(VOC_COLORMAP[indices], tf.int32)  # [22, 3]
    matches = tf.reduce_all(tf.cast(rgb, tf.int32)[..., None, :] == palette, axis=-1)  # [H, W, 22]
    known = tf.reduce_any(matches, axis=-1)
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        ["Colour label with colours outside the VOC palette:", path, "pixels:",
         tf.reduce_sum(tf.cast(tf.logical_not(known), tf.int32)),
         "Save class indices as a single-channel (grayscale) PNG, or VOC palette colours."])
    with tf.control_dependencies([check]):
        return tf.gather(tf.constant(indices, tf.uint8), tf.argmax(matches, axis=-1))


def _png_header(contents):
    """(bit depth, colour type) from a PNG's IHDR chunk (bytes 24 and 25)."""
    header = tf.io.decode_raw(tf.strings.substr(contents, 24, 2), tf.uint8)
    return tf.cast(header[0], tf.int32), tf.cast(header[1], tf.int32)


def read_label(path, num_classes, ignore_value=IGNORE_LABEL, voc_palette=False):
    """uint8 [H, W] class map; `ignore_value` on disk becomes IGNORE_LABEL.

    What is unambiguous is decoded: 8- or 16-bit single-channel PNGs (16-bit values must be
    below 256), and colour or palette PNGs whose pixels are all grey (R = G = B: the grey value is
    the class). With `voc_palette` (VOC only), colour PNGs are mapped back through the VOC
    palette. Anything else fails with the file's name: a JPEG label (compression changes
    class values), a colour label outside the palette, values out of range.
    """
    contents = _read(path)
    is_png = tf.debugging.Assert(
        tf.equal(tf.strings.substr(contents, 0, 4), b"\x89PNG"),
        ["Label is not a PNG (JPEG compression alters class values):", path,
         "Save labels as single-channel PNGs of class indices."])
    with tf.control_dependencies([is_png]):
        bit_depth, _ = _png_header(contents)

    def sixteen_bit():
        wide = tf.io.decode_png(contents, channels=1, dtype=tf.uint16)[..., 0]
        check = tf.debugging.Assert(
            tf.reduce_max(wide) < 256,
            ["16-bit label with values above 255:", path, "max:", tf.reduce_max(wide),
             "Save class indices (and the ignore value) below 256."])
        with tf.control_dependencies([check]):
            return tf.cast(wide, tf.uint8)

    def eight_bit():
        decoded = tf.io.decode_png(contents, channels=0)  # palette PNGs come expanded to RGB(A)
        if_grey = decoded[..., 0]
        channels = tf.shape(decoded)[-1]

        def colour():
            rgb = decoded[..., :3]
            grey = tf.reduce_all(tf.logical_and(rgb[..., 0] == rgb[..., 1], rgb[..., 1] == rgb[..., 2]))
            if voc_palette:
                return tf.cond(grey, lambda: rgb[..., 0], lambda: _palette_to_index(rgb, path))
            check = tf.debugging.Assert(
                grey,
                ["Colour label (RGB, or a palette PNG whose colours are not grey):", path,
                 "Save class indices as a single-channel (grayscale) PNG."])
            with tf.control_dependencies([check]):
                return tf.identity(rgb[..., 0])

        return tf.cond(channels <= 2, lambda: if_grey, colour)  # 1 grey, 2 grey + alpha, 3/4 colour

    label = tf.cond(bit_depth == 16, sixteen_bit, eight_bit)
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


def read_pair(image_path, label_path, num_classes, ignore_value=IGNORE_LABEL, voc_palette=False):
    """{"image": uint8 [H, W, 3], "label": uint8 [H, W]} with a size check."""
    image = read_image(image_path)
    label = read_label(label_path, num_classes, ignore_value, voc_palette)
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
            return path, read_error_text(path, err)
    return None


def read_error_text(path, err):
    """Why `path` could not be read, in a user's words, from a TF error of reading or decoding it:
    without TF's function-node prefix and op suffix ("Unknown image file format. One of JPEG, ...")."""
    if not os.path.isfile(path):
        return "no such file"
    if "Not a PNG or JPEG" in err.message:
        return "not a PNG or JPEG file (empty, corrupt or wrong format)"
    line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", err.message.splitlines()[0])
    return line.split(" [Op:")[0].strip()


def assertion_text(message):
    """The text of a failed `tf.debugging.Assert` from a TF error message, eager or graph (where it
    follows "Graph execution error:" and node names): "[a] [b] [c]" -> "a b c"."""
    line = next(line for line in message.splitlines() if "assertion failed" in line)
    text = line.split("assertion failed:", 1)[1].strip()
    if text.startswith("[") and text.endswith("]"):
        text = " ".join(text[1:-1].split("] ["))
    return text


@contextlib.contextmanager
def explain_data_errors(paths):
    """Turn an anonymous decoding error raised by a tf.data pipeline into one naming the file.

    Errors that already name a file (the assertions above) pass through unchanged.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        if "assertion failed" in err.message:
            raise DataError(assertion_text(err.message)) from None
        bad = find_unreadable(paths)
        if bad is None:
            raise
        raise DataError(f"Cannot decode {bad[0]} ({bad[1]}). The file is truncated or corrupt: "
                        "replace it or remove it from the split.") from None

"""Export a trained segmenter for TF Serving, and predict label maps for image files.

The SavedModel holds the whole inference path of `inference.predict_logits` (the run's
`image_scale`, padding to the network's stride, logits resized back), so a client sends the
image as it is and gets labels at its resolution. Signatures:

    serving_default   image_bytes: string [B] (PNG / JPEG files; base64 `{"b64": ...}` over REST,
                      images of one request must share a size)  -> classes uint8 [B, H, W],
                      confidence float32 [B, H, W] (the winning class's softmax probability)
    serve_pixels      images: uint8 [B, H, W, 3]                  -> classes, confidence
    serve             images: float32 [B, H, W, 3] in [0, 255]    -> logits [B, H, W, C], labels int32

Each signature checks its input in the graph and answers a wrong one with an InvalidArgument error
that a serving client can act on (`checked_images`, `decoded_images`), not TensorFlow's internals.
"""

import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg import files
from tfsemiseg.data.io import VOC_COLORMAP, read_error_text, read_image
from tfsemiseg.inference import predict_logits


class ExportError(ValueError):
    """The export or prediction cannot be written as asked; the message says why and what to do."""


def _classes(logits):
    dtype = tf.uint8 if logits.shape[-1] <= 256 else tf.int32
    probs = tf.nn.softmax(logits)
    return {"classes": tf.cast(tf.argmax(logits, axis=-1), dtype), "confidence": tf.reduce_max(probs, axis=-1)}


def _require(checks, value):
    """`value` once every (ok, message) of `checks` holds, else an InvalidArgument error with the first
    failing message. Each condition must be safe to compute whatever the input (the graph may run
    them in any order), so a check is written "an earlier one failed, or this holds"."""
    asserts, earlier_ok = [], tf.constant(True)
    for ok, message in checks:
        asserts.append(tf.debugging.Assert(tf.logical_or(tf.logical_not(earlier_ok), ok), [message]))
        earlier_ok = tf.logical_and(earlier_ok, ok)
    with tf.control_dependencies(asserts):
        return tf.identity(value)


def checked_images(images, name="images"):
    """`images` as [B, H, W, 3], or an InvalidArgument error naming what is wrong: the rank, the
    channels, an empty batch or an empty image. Signatures take any shape so that this check, not
    TensorFlow's shape machinery, answers the client."""
    shape = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)[:4]  # defined for any rank
    images = _require([
        (tf.equal(tf.rank(images), 4), f"{name}: expected a batch of RGB images [batch, height, width, 3]; send "
                                       "one image as a batch of one"),
        (tf.equal(shape[3], 3), f"{name}: expected 3 channels (RGB) in the last dimension"),
        (shape[0] > 0, f"{name}: the batch is empty; send at least one image"),
        (tf.reduce_min(shape[1:3]) > 0, f"{name}: an image has no pixels (height or width 0)"),
    ], images)
    # Static shape [?, ?, ?, 3] for what follows, by a reshape (tf.ensure_shape lets graph optimisation
    # take the rank as known and skip the rank check's message).
    return tf.reshape(images, tf.stack([-1, shape[1], shape[2], 3]))


def decoded_images(image_bytes):
    """The PNG / JPEG files of `image_bytes` [B] decoded to uint8 [B, H, W, 3]; an InvalidArgument error
    names an empty batch or file, and images of different sizes in one request."""
    image_bytes = tf.reshape(image_bytes, [-1])
    lengths = tf.concat([tf.strings.length(image_bytes), [1]], 0)  # defined for an empty batch
    image_bytes = _require([
        (tf.size(image_bytes) > 0, "image_bytes: the batch is empty; send at least one file"),
        (tf.reduce_min(lengths) > 0, "image_bytes: an empty string; send the bytes of a PNG or JPEG file "
                                     "(base64 {\"b64\": ...} over REST)"),
    ], image_bytes)

    def decode(b):
        return tf.io.decode_image(b, channels=3, expand_animations=False)

    first = tf.shape(decode(image_bytes[0]))[:2]

    def decode_same_size(b):
        image = decode(b)
        return _require([(tf.reduce_all(tf.equal(tf.shape(image)[:2], first)), "image_bytes: the images of one "
                          "request must share a size (height, width); send images of other sizes in separate "
                          "requests")], image)

    return tf.map_fn(decode_same_size, image_bytes, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def export_saved_model(segmenter, path, image_scale=1.0, overwrite=False):
    """Write a SavedModel (TF Serving layout: put it under `<model_name>/<version>/`).

    Refuses to replace an existing non-empty directory unless `overwrite`: a served version is
    never overwritten by accident. Written beside it (a hidden `.<version>.tmp-<pid>` folder, which
    TF Serving ignores) and renamed into place, so an interrupted export leaves no half-written
    version for TF Serving to load, and the next export is not refused.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExportError(f"{path} is a file: --output names the SavedModel's directory, a version folder "
                          "such as exported/camvid/1.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ExportError(f"{path} exists and is not empty: TF Serving versions are immutable. Export to a new "
                          "version directory (e.g. .../2), or pass --overwrite.")

    def logits_of(images):
        return predict_logits(segmenter, images, image_scale)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        return _classes(logits_of(decoded_images(image_bytes)))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serve_pixels(images):
        return _classes(logits_of(checked_images(images)))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="images")])
    def serve(images):
        logits = logits_of(checked_images(images))
        return {"logits": logits, "labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(segmenter)
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("serve_pixels", serve_pixels)
    archive.add_endpoint("serve", serve)
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    try:
        with files.writing(path):
            archive.write_out(tmp, verbose=False)
        if os.path.isdir(path) and os.listdir(path):  # --overwrite: the old version goes once the new is whole
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)  # replaces an empty folder
    except tf.errors.OpError as err:  # e.g. a file where a folder of the path should be, no permission
        raise ExportError(f"Cannot write the SavedModel to {path}: {err.message.splitlines()[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def output_names(image_paths):
    """`<stem>.png` per input. Inputs that share a stem keep what tells them apart in the name: their
    folders (a/x.jpg, b/x.png -> a_x.png, b_x.png), and their extension if that is all
    (x.jpg, x.png -> x_jpg.png, x_png.png), so that no prediction overwrites another. The same
    image given twice is refused, by name."""
    seen = {}
    for path in image_paths:
        if os.path.abspath(path) in seen:
            raise ExportError(f"{path} is given twice ({seen[os.path.abspath(path)]} and {path}); give each image once.")
        seen[os.path.abspath(path)] = path

    def flat(path, extension):
        name, ext = os.path.splitext(os.path.normpath(path))
        return name.strip(os.sep).replace(os.sep, "_") + (ext.replace(".", "_") if extension else "")

    stems = [os.path.splitext(os.path.basename(p))[0] for p in image_paths]
    names = [flat(p, False) if stems.count(stem) > 1 else stem for p, stem in zip(image_paths, stems)]
    names = [flat(p, True) if names.count(name) > 1 else name for p, name in zip(image_paths, names)]
    return [name + ".png" for name in names]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def image_files(paths):
    """The files to predict: each file as given, and each folder's images (sorted by name)."""
    found_files = []
    for path in paths:
        if not os.path.isdir(path):
            found_files.append(path)
            continue
        found = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, name)))
        if not found:
            raise ExportError(f"{path} is a folder without images ({', '.join(IMAGE_EXTENSIONS)}): give image "
                              "files, or a folder that holds some.")
        found_files += found
    return found_files


def predict_files(segmenter, image_paths, output_dir, colour=True, image_scale=1.0):
    """Predict each whole image and write `<output_dir>/<stem>.png` (class indices, or VOC colours).

    Preprocessing is the run's (`inference.predict_logits`), so the maps have the input's size
    and equal what the exported SavedModel returns. Returns (written paths, [(path, error)] of
    the images that could not be read; the others are still predicted).
    """
    os.makedirs(output_dir, exist_ok=True)
    predict = tf.function(lambda image: tf.argmax(predict_logits(segmenter, image, image_scale), axis=-1))
    written, failed = [], []
    for path, name in zip(image_paths, output_names(image_paths)):
        try:
            image = read_image(path)[None]
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
            failed.append((path, read_error_text(path, err)))
            continue
        labels = predict(image)[0].numpy()
        out = VOC_COLORMAP[labels].astype(np.uint8) if colour else labels.astype(np.uint8)[..., None]
        target = os.path.join(output_dir, name)
        with files.writing(target):
            tf.io.write_file(target, tf.io.encode_png(out))
        written.append(target)
    return written, failed

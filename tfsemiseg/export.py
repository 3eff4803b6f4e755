"""Export a trained segmenter for TF Serving, and predict label maps for image files.

The exported SavedModel's `serve` signature takes raw RGB images (float32 [B, H, W, 3] in
[0, 255], any size) and returns `logits` and `labels` (int32 [B, H, W]); normalisation is
inside the model, so clients send pixels as they are.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg.data.io import VOC_COLORMAP, read_image


def export_saved_model(segmenter, path):
    """Write a SavedModel (TF Serving layout: put it under `<model_name>/<version>/`)."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve(images):
        logits = segmenter(images, training=False)
        return {"logits": logits, "labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(segmenter)
    archive.add_endpoint("serve", serve)
    archive.write_out(path, verbose=False)
    return path


def predict_files(segmenter, image_paths, output_dir, colour=True, image_scale=1.0):
    """Predict each whole image and write `<output_dir>/<stem>.png` (class indices, or VOC colours).

    `image_scale` is the run's: images are resized by it before inference (as in training and
    evaluation) and the logits resized back, so the written maps have the input's size.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in image_paths:
        image = tf.cast(read_image(path), tf.float32)[None]
        size = tf.shape(image)[1:3]
        scaled = tf.image.resize(image, tf.cast(tf.round(tf.cast(size, tf.float32) * image_scale), tf.int32))
        logits = tf.image.resize(segmenter(scaled, training=False), size)
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)[0].numpy()
        out = VOC_COLORMAP[labels].astype(np.uint8) if colour else labels.astype(np.uint8)[..., None]
        target = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        tf.io.write_file(target, tf.io.encode_png(out))
        written.append(target)
    return written

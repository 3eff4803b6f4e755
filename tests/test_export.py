import os

import numpy as np
import tensorflow as tf

from tests.conftest import write_image
from tfsemiseg import export
from tfsemiseg.models.segmenters import build_segmenter


def test_saved_model_serves_raw_pixels_like_the_keras_model(tmp_path):
    seg = build_segmenter("deeplabv3plus", "tiny", 4)
    path = export.export_saved_model(seg, str(tmp_path / "segmenter" / "1"))
    served = tf.saved_model.load(path).signatures["serve"]
    images = tf.random.uniform([2, 40, 56, 3], 0, 255)
    out = served(images=images)
    np.testing.assert_allclose(out["logits"], seg(images, training=False), atol=1e-4)
    assert out["labels"].shape == (2, 40, 56) and out["labels"].dtype == tf.int32


def test_predict_files_writes_one_png_per_image(tmp_path):
    seg = build_segmenter("deeplabv2", "tiny", 3)
    paths = [str(tmp_path / "in" / f"{n}.png") for n in ("a", "b")]
    for p in paths:
        write_image(p, 24, 40)
    written = export.predict_files(seg, paths, str(tmp_path / "out"), colour=False)
    assert [os.path.basename(p) for p in written] == ["a.png", "b.png"]
    labels = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
    assert labels.shape == (24, 40, 1) and labels.max() < 3

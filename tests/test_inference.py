import numpy as np
import tensorflow as tf

from tfsemiseg.inference import tta_scores


def test_tta_keeps_the_shape_and_averages_probabilities():
    predict = lambda x: x[..., :3] * 0.02  # noqa: E731 (a pointwise "model")
    images = tf.random.uniform([2, 30, 44, 3], 0, 255)
    scores = tta_scores(predict, images)
    assert scores.shape == (2, 30, 44, 3)
    np.testing.assert_allclose(tf.reduce_sum(scores, -1), 1.0, atol=1e-5)


def test_tta_mixes_scales_and_undoes_the_flip():
    """A model whose answer depends on the image width differs per scale, so TTA is not the
    single-scale answer; a pointwise model on a random image shows the flipped view is flipped back."""
    def predict(x):
        w = tf.cast(tf.shape(x)[2], tf.float32)
        ramp = tf.cast(tf.range(tf.shape(x)[2]), tf.float32)[None, None, :, None] / w
        ramp = tf.broadcast_to(ramp, tf.concat([tf.shape(x)[:3], [1]], 0))
        return tf.concat([ramp * 4.0, tf.zeros_like(ramp) + w / 20.0], -1)
    images = tf.zeros([1, 8, 40, 3])
    single = tta_scores(predict, images, scales=(1.0,), flip=False)
    both = tta_scores(predict, images, scales=(0.5, 2.0), flip=False)
    assert not np.allclose(single, both, atol=1e-3)
    pointwise = lambda x: x * 0.02  # noqa: E731
    images = tf.random.uniform([1, 8, 40, 3], 0, 255)
    np.testing.assert_allclose(tta_scores(pointwise, images, scales=(1.0,), flip=True),
                               tf.nn.softmax(pointwise(images)), atol=1e-5)

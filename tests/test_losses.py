import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg import losses


def test_cross_entropy_hand_computed_and_ignores_255():
    logits = tf.constant([[[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]]])  # 1x1x3 pixels, 2 classes
    labels = tf.constant([[[0, 1, 255]]])
    expected = (np.log(1 + np.exp(-2.0)) + np.log(2.0)) / 2
    assert float(losses.cross_entropy(labels, logits)) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_zero_gradient():
    logits = tf.Variable(tf.random.normal([1, 2, 2, 3]))
    with tf.GradientTape() as tape:
        loss = losses.cross_entropy(tf.fill([1, 2, 2], 255), logits)
    assert float(loss) == 0.0
    assert float(tf.reduce_sum(tf.abs(tape.gradient(loss, logits)))) == 0.0


def test_binary_cross_entropy_against_constant_with_mask():
    logits = tf.constant([[[0.0, 2.0]]])
    expected_1 = (np.log(2.0) + np.log(1 + np.exp(-2.0))) / 2
    assert float(losses.binary_cross_entropy(logits, 1.0)) == pytest.approx(expected_1, rel=1e-6)
    mask = tf.constant([[[False, True]]])
    assert float(losses.binary_cross_entropy(logits, 0.0, mask)) == pytest.approx(np.log(1 + np.exp(2.0)), rel=1e-6)

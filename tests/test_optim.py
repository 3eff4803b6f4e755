import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg import optim


def network():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))


def test_a_mean_teacher_starts_as_a_copy_of_the_network_and_normalises_with_batch_statistics():
    student = network()
    teacher = optim.mean_teacher(student)
    assert len(teacher.weights) == len(student.weights)
    x = tf.random.uniform((2, 4, 4, 3))
    np.testing.assert_allclose(teacher(x), student(x), rtol=1e-6)
    # In training mode its BatchNorm uses the batch's statistics: each channel has mean 0 (beta).
    np.testing.assert_allclose(tf.reduce_mean(teacher(x, training=True), [0, 1, 2]), 0.0, atol=1e-5)
    assert {id(v) for v in teacher.weights}.isdisjoint(id(v) for v in student.weights)


@pytest.mark.parametrize("step, m", [(1, 0.5), (3, 0.75), (1000, 0.99)])
def test_the_teacher_moves_to_the_average_with_a_warm_up_momentum(step, m):
    """m = min(momentum, 1 - 1 / (step + 1)), on every weight: kernels and BatchNorm statistics."""
    student = network()
    teacher = optim.mean_teacher(student)
    before = [w.numpy() for w in teacher.weights]
    for w in student.weights:
        w.assign(w + 1.0)
    optim.update_mean_teacher(teacher, student, 0.99, tf.constant(step, tf.int64))
    for t, b, s in zip(teacher.weights, before, student.weights):
        np.testing.assert_allclose(t.numpy(), m * b + (1 - m) * s.numpy(), rtol=1e-5, err_msg=t.path)
    assert any("moving_variance" in w.path for w in teacher.weights)

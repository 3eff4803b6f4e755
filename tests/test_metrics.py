import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.metrics import MeanIoU


def one_hot_logits(pred, num_classes):
    return tf.one_hot(pred, num_classes) * 10.0


def test_miou_hand_computed_over_batches_with_ignore():
    metric = MeanIoU(3)
    # batch 1: gt [0 0 1 255], pred [0 1 1 2]; batch 2: gt [2], pred [2]
    metric.update_state(tf.constant([[[0, 0, 1, 255]]]), one_hot_logits([[[0, 1, 1, 2]]], 3))
    metric.update_state(tf.constant([[[2]]]), one_hot_logits([[[2]]], 3))
    # class 0: I=1, U=2 -> 0.5; class 1: I=1, U=2 -> 0.5; class 2: I=1, U=1 (ignored pixel excluded) -> 1
    np.testing.assert_allclose(metric.per_class_iou(), [0.5, 0.5, 1.0])
    assert float(metric.result()) == pytest.approx(2 / 3)


def test_absent_classes_are_left_out_of_the_mean():
    metric = MeanIoU(4)
    metric.update_state(tf.constant([[[0, 1]]]), one_hot_logits([[[0, 1]]], 4))
    iou = metric.per_class_iou()
    assert iou[:2].tolist() == [1.0, 1.0] and np.isnan(iou[2:]).all()
    assert float(metric.result()) == pytest.approx(1.0)


def test_per_image_miou_hand_computed():
    from tfsemiseg.metrics import per_image_miou
    ref = tf.constant([[[0, 0, 1, 1]], [[2, 2, 2, 255]]])
    pred = tf.constant([[[0, 1, 1, 1]], [[2, 2, 2, 0]]])
    # image 0: class 0 I=1 U=2 (0.5), class 1 I=2 U=3 (2/3) -> 7/12; image 1: class 2 perfect, void not counted
    np.testing.assert_allclose(per_image_miou(pred, ref, 3), [7 / 12, 1.0], rtol=1e-6)

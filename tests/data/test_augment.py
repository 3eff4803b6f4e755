import numpy as np
import tensorflow as tf

from tfsemiseg.data import augment, build_dataset, labeled_stream, unlabeled_stream, eval_stream
from tfsemiseg.data.io import IGNORE_LABEL
from tfsemiseg.config import Config


def _coded_pair(h=20, w=30, block=5):
    """An image whose red channel codes the label (blocks of `block` px), so alignment can be checked."""
    label = np.random.default_rng(0).integers(0, 5, (h // block + 1, w // block + 1)).astype(np.uint8)
    label = np.kron(label, np.ones((block, block), np.uint8))[:h, :w]
    image = np.stack([label * 40, np.zeros_like(label), np.zeros_like(label)], -1).astype(np.float32)
    return tf.constant(image), tf.constant(label)


def test_weak_augment_keeps_image_and_label_aligned_and_pads_with_ignore():
    image, label = _coded_pair()
    for _ in range(10):
        img, lbl = augment.weak_augment(image, label, crop_size=48, scale_range=(0.5, 1.0))
        img, lbl = img.numpy(), lbl.numpy()
        assert img.shape == (48, 48, 3) and lbl.shape == (48, 48)
        real = lbl != IGNORE_LABEL
        assert real.mean() < 1.0  # a 30x20 image scaled down cannot fill 48x48: padding is present
        agree = np.abs(img[..., 0][real] - lbl[real] * 40.0) < 1.0  # bilinear differs only at block edges
        assert agree.mean() > 0.6
        assert (img[~real] == 0).all()  # padded image is 0


def test_random_crop_and_flip_apply_the_same_window():
    image, label = _coded_pair(40, 40, block=1)
    img, lbl = augment.random_flip(*augment.random_crop(image, label, 16))
    np.testing.assert_array_equal(img.numpy()[..., 0], lbl.numpy() * 40.0)


def test_cutout_sets_the_label_to_ignore_under_the_box():
    image = tf.fill([64, 64, 3], 7.0)
    label = tf.zeros([64, 64], tf.uint8)
    img, lbl = augment.cutout(image, label, p=1.0)
    box = lbl.numpy() == IGNORE_LABEL
    assert 0.02 * 64 * 64 * 0.5 <= box.sum() <= 0.4 * 64 * 64
    ys, xs = np.nonzero(box)
    assert box[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one rectangle
    assert (img.numpy()[~box] == 7.0).all()
    assert np.std(img.numpy()[box]) > 30  # noise inside
    _, lbl = augment.cutout(image, label, p=0.0)
    assert (lbl.numpy() == 0).all()


def test_strong_augment_changes_colours_not_geometry_and_works_in_tf_data():
    strong = augment.StrongAugment(p_cutout=0.0)
    image, label = _coded_pair()
    ds = tf.data.Dataset.from_tensors((image + 50.0, label)).repeat(8).map(strong)
    outs = list(ds)
    for img, lbl in outs:
        np.testing.assert_array_equal(lbl.numpy(), label.numpy())
        assert img.shape == image.shape and float(tf.reduce_min(img)) >= 0 and float(tf.reduce_max(img)) <= 255
    assert len({float(tf.reduce_mean(img)) for img, _ in outs}) > 1  # per-example randomness


def test_streams_shapes_and_independence():
    cfg = Config(crop_size=32, batch_size=4, eval_batch_size=3, scale_range=(0.5, 1.0))
    ds = build_dataset("synthetic", split="1_16")
    lab = next(iter(labeled_stream(ds, cfg)))
    assert lab["image"].shape == (4, 32, 32, 3) and lab["label"].shape == (4, 32, 32)
    unl = next(iter(unlabeled_stream(ds, cfg, strong=augment.StrongAugment())))
    assert set(unl) == {"image", "valid", "image_strong", "valid_strong"}
    assert unl["valid"].dtype == tf.uint8
    assert bool(tf.reduce_all(unl["valid"] >= unl["valid_strong"]))  # strong valid is a subset
    ev = next(iter(eval_stream(ds, cfg)))
    assert ev["image"].shape == (3, 64, 64, 3)  # whole images, no crop

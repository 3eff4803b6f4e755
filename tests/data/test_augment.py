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


# -- colour jitter: the official formulas ----------------------------------------------------------

def _gray(x):
    return x @ np.array([0.299, 0.587, 0.114])


def _hue_shift(x, delta):
    import colorsys
    flat = [colorsys.hsv_to_rgb((h + delta) % 1.0, s, v) for h, s, v in
            (colorsys.rgb_to_hsv(*pixel) for pixel in x.reshape(-1, 3))]
    return np.array(flat).reshape(x.shape)


def _torchvision_jitter(x, factors, order):
    """transforms.ColorJitter's ops (torchvision functional_tensor), x in [0, 1]."""
    b, c, s, h = factors
    ops = [lambda x: x * b, lambda x: c * x + (1 - c) * _gray(x).mean(),
           lambda x: s * x + (1 - s) * _gray(x)[..., None], lambda x: _hue_shift(x, h)]
    for i in order:
        x = np.clip(ops[i](x), 0, 1)
    return x


def _tf_jitter(x, factors, order):
    """PseudoSeg's preprocess_utils jitter: brightness added, contrast about each channel's mean,
    saturation scaled in HSV."""
    import colorsys
    b, c, s, h = factors

    def saturate(x):
        hsv = [colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3)]
        return np.array([colorsys.hsv_to_rgb(hh, min(ss * s, 1.0), vv) for hh, ss, vv in hsv]).reshape(x.shape)

    ops = [lambda x: x + b, lambda x: c * (x - x.mean((0, 1))) + x.mean((0, 1)), saturate,
           lambda x: _hue_shift(x, h)]
    for i in order:
        x = np.clip(ops[i](x), 0, 1)
    return x


def _colour_image(seed=0, size=12):
    return np.random.default_rng(seed).uniform(0.05, 0.95, (size, size, 3))


def test_color_jitter_matches_the_official_formulas_op_by_op_and_in_any_order():
    x = _colour_image()
    cases = [((1.4, 1.0, 1.0, 0.0), [0, 1, 2, 3]), ((1.0, 0.6, 1.0, 0.0), [1, 0, 2, 3]),
             ((1.0, 1.0, 1.45, 0.0), [2, 0, 1, 3]), ((1.0, 1.0, 1.0, 0.2), [3, 0, 1, 2]),
             ((0.7, 1.3, 0.55, -0.17), [2, 3, 0, 1]), ((1.3, 0.5, 1.5, 0.24), [3, 1, 2, 0])]
    for style, reference in (("torchvision", _torchvision_jitter), ("tf", _tf_jitter)):
        jitter = augment.ColorJitter(style=style)
        for factors, order in cases:
            if style == "tf":
                factors = (factors[0] - 1.0,) + factors[1:]  # additive brightness
            got = jitter.apply(tf.constant(x * 255, tf.float32), tf.constant(factors, tf.float32),
                               tf.constant(order)).numpy() / 255
            np.testing.assert_allclose(got, reference(x, factors, order), atol=2e-3, err_msg=f"{style} {factors}")


def _saturation(x):
    x = np.asarray(x, np.float64)
    return (x.max(-1) - x.min(-1)).mean()


def test_strong_views_keep_their_saturation_and_grey_only_the_grayscale_share():
    """The official jitter keeps the median view's saturation near the input's and greys only the
    20 % that RandomGrayscale picks (Keras' RandomColorJitter greyed about a third, median 0.15)."""
    x = tf.constant(_colour_image(1, 16) * 255, tf.float32)
    label = tf.zeros([16, 16], tf.uint8)
    strong = augment.StrongAugment(p_blur=0.0, p_cutout=0.0)
    views = tf.data.Dataset.from_tensors((x, label)).repeat(300).map(strong).map(lambda image, _: image)
    ratios = np.array([_saturation(view) for view in views.as_numpy_iterator()]) / _saturation(x)
    grey = (ratios < 0.02).mean()
    assert 0.12 < grey < 0.29, grey
    assert 0.8 < np.median(ratios) < 1.25, np.median(ratios)
    assert (ratios > 1.05).mean() > 0.15  # some views are more saturated than the input
    draws = tf.data.Dataset.range(200).map(lambda _: augment.ColorJitter().sample()[0])
    factors = np.stack(list(draws.as_numpy_iterator()))
    assert factors[:, :3].min() >= 0.5 and factors[:, :3].max() <= 1.5 and np.abs(factors[:, 3]).max() <= 0.25

"""PseudoSeg: fusion, Grad-CAM, the SGC's attention mask, gradient isolation, the image-level variant, a fit."""

import re

import numpy as np
import pytest
import tensorflow as tf

import configs
from tfsemiseg import losses, runner
from tfsemiseg.data import build_dataset, io, pipeline
from tfsemiseg.models.heads import resize_like
from tfsemiseg.methods.pseudoseg import (PseudoSeg, SelfAttentionGradCAM, build_classifier, fuse_pseudo_labels,
                                         grad_cam, present_classes)
from tests.conftest import benchmark_script


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fusion_calibrates_with_one_scalar_averages_and_sharpens():
    p = np.array([[[[2.0, 0.0, -1.0]]], [[[0.5, 0.5, 0.0]]]], np.float32)  # [2, 1, 1, 3]
    m = np.array([[[[0.0, 3.0, 0.0]]], [[[1.0, -1.0, 2.0]]]], np.float32)
    s = 1 / np.sqrt(np.mean(np.concatenate([p, m]) ** 2) + 1e-8)
    fused = 0.5 * softmax(s * p) + 0.5 * softmax(s * m)
    expected = fused ** 2 / (fused ** 2).sum(-1, keepdims=True)  # T = 0.5
    np.testing.assert_allclose(fuse_pseudo_labels(p, m, 0.5, 0.5), expected, rtol=1e-5)
    np.testing.assert_allclose(fuse_pseudo_labels(p, m, 0.0, 1.0), softmax(s * p), rtol=1e-5)  # decoder only
    assert (np.max(expected, -1) > np.max(fused, -1)).all()  # sharpening raises the winning class


def test_pseudo_labels_and_cams_carry_no_gradient():
    p, m = tf.Variable(tf.random.normal([1, 4, 4, 3])), tf.Variable(tf.random.normal([1, 4, 4, 3]))
    features = tf.Variable(tf.random.uniform([2, 5, 5, 8]))
    classifier = build_classifier(8, 3)
    with tf.GradientTape(persistent=True) as tape:
        fused = tf.reduce_sum(fuse_pseudo_labels(p, m) * tf.range(3, dtype=tf.float32))
        cam = tf.reduce_sum(grad_cam(features, classifier, tf.ones([2, 3])))
    assert tape.gradient(fused, [p, m]) == [None, None]
    assert tape.gradient(cam, features) is None


def test_grad_cam_equals_the_closed_form_cam_of_the_linear_head():
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 1, (2, 6, 7, 16)).astype("float32")
    classifier = build_classifier(16, 4)
    weights = classifier.get_layer("head_cls_logits").kernel.numpy()  # [16, 4]
    classes = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], np.float32)
    cam = grad_cam(features, classifier, classes).numpy()
    closed = np.maximum(np.einsum("bhwd,dk->bhwk", features, weights), 0) * classes[:, None, None]
    peak = closed.max(axis=(1, 2), keepdims=True)
    expected = np.divide(closed, peak, out=np.zeros_like(closed), where=peak > 0)
    np.testing.assert_allclose(cam, expected, atol=1e-5)
    assert cam[1, ..., 0].max() == 0 and cam[0, ..., 1].max() == 0  # absent classes are empty


def test_attention_masks_padding_and_cutout():
    sgc = SelfAttentionGradCAM(3, background=True, attention_dim=8)
    rng = np.random.default_rng(1)
    hyper = rng.normal(size=(1, 4, 4, 12)).astype("float32")
    cam = rng.uniform(size=(1, 4, 4, 2)).astype("float32")
    valid = np.ones((1, 4, 4), bool)
    valid[0, 3, :] = False   # padding row
    valid[0, 0, 0] = False   # a cutout pixel
    weights = sgc.attention(hyper, valid).numpy()[0]  # [16, 16]
    flat = valid.reshape(-1)
    assert np.allclose(weights[flat][:, ~flat], 0) and np.allclose(weights[flat].sum(-1), 1)
    # What lies under the mask cannot change the valid positions' output.
    out = sgc(hyper, cam, valid, training=False).numpy()
    hyper2, cam2 = hyper.copy(), cam.copy()
    hyper2[0, 3] += 5.0
    cam2[0, 3] = 1.0 - cam2[0, 3]
    out2 = sgc(hyper2, cam2, valid, training=False).numpy()
    np.testing.assert_allclose(out.reshape(16, 3)[flat], out2.reshape(16, 3)[flat], atol=1e-5)
    assert out.shape == (1, 4, 4, 3)  # background channel prepended: 1 + 2 classes


def test_present_classes_drops_background_only_when_the_dataset_has_one():
    labels = np.array([[[0, 2], [255, 2]]], np.uint8)
    np.testing.assert_array_equal(present_classes(labels, 3, background=0), [[0, 1]])
    np.testing.assert_array_equal(present_classes(labels, 3, background=None), [[1, 0, 1]])


@pytest.fixture(scope="module")
def synthetic():
    cfg = configs.get_config("pseudoseg", "synthetic").replace(crop_size=32, batch_size=2, iterations=4,
                                                               steps_per_epoch=2)
    return cfg, build_dataset("synthetic", split="1_16")


def test_loss_sa_trains_only_the_sgc(synthetic):
    cfg, dataset = synthetic
    model = PseudoSeg.create(cfg, dataset)
    batch = next(iter(pipeline.labeled_stream(dataset, cfg)))
    x, y = batch["image"], batch["label"]
    with tf.GradientTape() as tape:
        hyper, features, _ = model.forward(x, training=True)
        cam = grad_cam(features, model.classifier, present_classes(y, dataset.num_classes, dataset.background))
        sgc = model.sgc(hyper, cam, tf.ones(tf.shape(cam)[:3], tf.bool), training=True)
        loss_sa = losses.cross_entropy(y, resize_like(sgc, x))
    variables = model.optimized_variables()
    grads = dict(zip([v.path for v in variables], tape.gradient(loss_sa, variables)))
    sgc_paths = {v.path for v in model.sgc.trainable_variables}
    assert sgc_paths and all(grads[p] is not None for p in sgc_paths)
    assert all(g is None for p, g in grads.items() if p not in sgc_paths)


def test_image_level_variant_uses_the_given_classes(synthetic, monkeypatch):
    cfg, dataset = synthetic
    cfg = cfg.replace(image_labels="masks")
    model = PseudoSeg.create(cfg, dataset)
    monkeypatch.setattr(PseudoSeg, "predicted_classes", lambda *a: pytest.fail("predicted instead of given"))
    data = PseudoSeg.train_data(dataset, cfg)
    batch = next(iter(data))
    given = batch["unlabeled"]["classes"].numpy()
    assert given.shape == (2, dataset.num_classes)
    model.train_step(batch)
    expected = given[:, 1:].sum(-1).mean()  # background dropped
    assert float(model.trackers["classes_per_image"].result()) == pytest.approx(expected)


def test_tensorboard_cam_of_the_image_level_variant_uses_the_classes_in_the_masks(synthetic, monkeypatch):
    """Regression: the TensorBoard CAM of the image-level variant was of the predicted classes."""
    cfg, dataset = synthetic
    model = PseudoSeg.create(cfg.replace(image_labels="masks"), dataset)
    batch = next(iter(pipeline.labeled_stream(dataset, cfg)))
    images, labels = batch["image"], batch["label"]
    monkeypatch.setattr(PseudoSeg, "predicted_classes", lambda *a: pytest.fail("predicted instead of given"))
    shown = model.visualize(images, labels)
    views = model.pseudo_label_views(images, present_classes(labels, dataset.num_classes, dataset.background))
    np.testing.assert_allclose(shown["cam"], views["cam_max"], atol=1e-6)
    np.testing.assert_array_equal(shown["pseudo_label"], views["fused"])


def test_image_level_variant_reads_a_file_of_image_classes(synthetic, tmp_path, monkeypatch):
    """`--set image_labels=FILE`: each unlabeled image's listed classes (not its mask's) reach the CAM."""
    cfg, dataset = synthetic
    tags = tmp_path / "tags.txt"
    tags.write_text("# id, then its classes by name or index\n"
                    + "".join(f"{dataset.image_id(k)}.png square 4\n" for k in dataset.keys("unlabeled"))
                    + "999999 disc\n")  # lines of other images are allowed
    cfg = cfg.replace(image_labels=str(tags))
    model = PseudoSeg.create(cfg, dataset)
    monkeypatch.setattr(PseudoSeg, "predicted_classes", lambda *a: pytest.fail("predicted instead of given"))
    batch = next(iter(PseudoSeg.train_data(dataset, cfg)))
    expected = np.zeros(dataset.num_classes, np.uint8)
    expected[[dataset.class_names.index("square"), 4]] = 1
    np.testing.assert_array_equal(batch["unlabeled"]["classes"].numpy(), [expected, expected])
    model.train_step(batch)
    assert float(model.trackers["classes_per_image"].result()) == pytest.approx(2.0)


def test_image_level_labels_file_errors_name_the_file_and_line(synthetic, tmp_path):
    _, dataset = synthetic
    ids = [dataset.image_id(k) for k in dataset.keys("unlabeled")]
    cases = {
        "unknown": ("".join(f"{i} disc\n" for i in ids[:3]) + f"{ids[3]} dog\n",
                    "line 4: unknown class 'dog'. Classes of 'synthetic' are 0-5 or their names: background, disc"),
        "twice": (f"{ids[0]} disc\n{ids[0]} ring\n", f"line 2: image '{ids[0]}' is listed twice"),
        "missing": ("".join(f"{i}\n" for i in ids[1:]), f"has no line for 1 of the {len(ids)} unlabeled images, "
                                                           f"first: '{ids[0]}'"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        with pytest.raises(io.DataError, match=re.escape(message)):
            dataset.read_image_labels(str(path))
    with pytest.raises(io.DataError, match="does not exist"):
        dataset.read_image_labels(str(tmp_path / "nothing.txt"))
    alone = tmp_path / "alone.txt"
    alone.write_text("".join(f"{i}\n" for i in ids))
    rows = dataset.read_image_labels(str(alone))
    assert rows.shape == (len(ids), dataset.num_classes) and rows.sum() == 0  # an id alone: no class


def test_image_level_labels_name_classes_with_spaces_by_underscores(tmp_path):
    from tfsemiseg.data.datasets import CITYSCAPES_CLASSES, SegDataset

    dataset = SegDataset("cityscapes", CITYSCAPES_CLASSES, [], [("leftImg8bit/train/a/x_leftImg8bit.png", "y.png")])
    tags = tmp_path / "tags.txt"
    tags.write_text("x_leftImg8bit.png traffic_light Sky 0\n")
    row = dataset.read_image_labels(str(tags))[0]
    assert [CITYSCAPES_CLASSES[i] for i in np.flatnonzero(row)] == ["road", "traffic light", "sky"]


def test_examples_carry_per_image_extras_through_the_shuffle():
    """`extras` stay paired with their image when the keys are shuffled."""
    from tfsemiseg.data import synthetic as synthetic_data

    dataset = build_dataset("synthetic", split="1_16")
    keys = dataset.keys("unlabeled")
    stream = dataset.examples("unlabeled", shuffle_seed=3, with_label=False,
                              extras={"position": np.arange(len(keys))})
    for example in stream.take(4):
        key = keys[int(example["position"])]
        np.testing.assert_array_equal(example["image"].numpy(),
                                      synthetic_data.render(key, dataset.seed, dataset.image_size)["image"].numpy())


def test_unlabeled_image_labels_are_the_classes_in_the_crop(synthetic):
    cfg, dataset = synthetic
    batch = next(iter(pipeline.unlabeled_stream(dataset, cfg, image_labels=True)))
    assert set(batch) == {"image", "valid", "classes"}
    classes = batch["classes"].numpy()
    assert classes.dtype == np.uint8 and classes.max() <= 1 and (classes.sum(-1) >= 1).all()


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_a_few_steps_on_synthetic_then_evaluate_and_measure_the_pseudo_labels(synthetic, tmp_path):
    import dataclasses

    cfg, dataset = synthetic
    cfg = cfg.replace(workdir=str(tmp_path / "run"))
    metrics = runner.train(cfg, verbose=0)
    assert metrics["method"] == "pseudoseg" and metrics["steps"] == 4 and 0 <= metrics["miou"] <= 1
    assert (tmp_path / "run" / "final" / "segmenter.keras").exists()
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    assert events  # losses and the CAM / SGC / pseudo-label images

    quality = benchmark_script("pseudo_label_quality")
    few = dataclasses.replace(dataset, unlabeled=dataset.unlabeled[:4])
    results = quality.pseudoseg_quality(cfg.workdir, cfg, few)
    assert set(results) == {"decoder", "cam", "sgc", "fused"}
    for miou in results.values():
        assert 0 <= float(miou.result()) <= 1 and miou.total_cm.numpy().sum() == 4 * 64 * 64

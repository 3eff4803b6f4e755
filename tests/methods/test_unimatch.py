import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import configs
from tests.conftest import weak_strong_batch, weak_strong_model
from tfsemiseg import losses, runner
from tfsemiseg.data import pipeline
from tfsemiseg.data.io import IGNORE_LABEL
from tfsemiseg.methods import METHODS
from tfsemiseg.methods.fixmatch import FixMatch
from tfsemiseg.methods.unimatch import (DistributionAlignment, UniMatch, feature_dropout, mix_with_reversed,
                                       pseudo_labels)


def test_unimatch_is_registered_with_its_settings():
    assert METHODS["unimatch"] is UniMatch
    voc = configs.get_config("unimatch", "voc")
    assert (voc.arch, voc.output_stride, voc.aspp_rates, voc.crop_size, voc.lr, voc.head_lr_mult, voc.tau) == \
        ("deeplabv3plus", 16, (6, 12, 18), 321, 0.001, 10.0, 0.95)
    with pytest.raises(ValueError, match="--set tau: not a setting of --method=alss"):
        configs.get_config("alss", "synthetic").override(["tau=0.9"])
    assert configs.get_config("unimatch", "synthetic").override(["tau=0.9"]).tau == 0.9


def test_confident_cross_entropy_is_normalised_by_the_non_padded_pixels():
    """Official: sum over confident non-padded pixels / count of non-padded pixels (not of confident ones)."""
    logits = tf.constant([[[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]]]])  # [1, 1, 4, 2]
    target = tf.constant([[[0, 1, 0, 0]]])
    confidence = tf.constant([[[0.99, 0.5, 0.97, 0.96]]])
    valid = tf.constant([[[1, 1, 1, 0]]])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits).numpy()[0, 0]
    expected = (ce[0] + ce[2]) / 3  # pixel 1 not confident, pixel 3 padded
    got = losses.confident_cross_entropy(target, logits, confidence, 0.95, valid)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert float(losses.confident_cross_entropy(target, logits, confidence, 0.0, valid)) == \
        pytest.approx(ce[:3].sum() / 3, rel=1e-6)  # tau 0 (Cityscapes): every non-padded pixel


def test_ohem_keeps_the_hard_pixels_or_all_when_few():
    logits = tf.constant(np.log([[[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]]]), tf.float32)
    labels = tf.constant([[[0, 0, 0, IGNORE_LABEL]]])
    ce = -np.log([0.9, 0.6, 0.2])
    # min_kept 2 < 3 valid pixels: keep p <= max(0.7, 2nd smallest p = 0.6): pixels 1 and 2.
    np.testing.assert_allclose(float(losses.ohem_cross_entropy(labels, logits, 0.7, 2)), ce[1:].mean(), rtol=1e-5)
    # min_kept >= the valid pixels: all of them.
    np.testing.assert_allclose(float(losses.ohem_cross_entropy(labels, logits, 0.7, 5)), ce.mean(), rtol=1e-5)


def test_cutmix_keeps_image_pseudo_label_confidence_and_padding_aligned():
    images = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float32), [2, 4, 4, 3])
    labels = tf.constant(np.stack([np.zeros((4, 4)), np.ones((4, 4))]), tf.int32)
    confidence = tf.constant(np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.9)]), tf.float32)
    valid = tf.constant(np.stack([np.ones((4, 4)), np.zeros((4, 4))]), tf.uint8)
    box = np.zeros((2, 4, 4), np.uint8)
    box[0, 1:3, 1:3] = 1
    mixed_images, mixed_labels, mixed_conf, mixed_valid = mix_with_reversed(tf.constant(box), images, labels,
                                                                           confidence, valid)
    inside = box[0].astype(bool)
    # Image 0 inside its box is image 1, and so is everything that goes with it; outside, image 0's own.
    np.testing.assert_array_equal(mixed_images[0].numpy()[inside], images[1].numpy()[inside])
    np.testing.assert_array_equal(mixed_images[0].numpy()[~inside], images[0].numpy()[~inside])
    for mixed, source in ((mixed_labels, labels), (mixed_conf, confidence), (mixed_valid, valid)):
        np.testing.assert_array_equal(mixed[0].numpy()[inside], source[1].numpy()[inside])
        np.testing.assert_array_equal(mixed[0].numpy()[~inside], source[0].numpy()[~inside])
        np.testing.assert_array_equal(mixed[1].numpy(), source[1].numpy())  # no box: unchanged


def test_the_stream_gives_named_views_of_one_crop_with_boxes():
    """The strong views are photometric perturbations of the weak view's crop, drawn independently: with
    their perturbations off they are that crop, whatever the scale and flip drawn."""
    cfg = configs.get_config("unimatch", "synthetic").replace(crop_size=32, batch_size=4)
    dataset = runner.load_dataset(cfg)
    u = next(iter(UniMatch.train_data(dataset, cfg)))["unlabeled"]
    assert sorted(u) == ["box_1", "box_2", "image", "image_strong_1", "image_strong_2", "valid"]
    assert not np.allclose(u["image_strong_1"], u["image_strong_2"])
    assert not np.allclose(u["image_strong_1"], u["image"])
    assert set(np.unique(u["box_1"])) <= {0, 1}
    plain = cfg.override(["color_jitter=0,0,0,0", "p_gray=0", "p_blur=0"])
    for _, batch in zip(range(3), UniMatch.train_data(dataset, plain)):
        u = batch["unlabeled"]
        for view in ("image_strong_1", "image_strong_2"):
            np.testing.assert_allclose(u[view], u["image"], atol=1e-3)


def test_pseudo_labels_carry_no_gradient():
    logits = tf.Variable(tf.random.normal([1, 4, 4, 3]))
    with tf.GradientTape() as tape:
        target, confidence = pseudo_labels(logits)
        total = tf.reduce_sum(confidence)
    assert tape.gradient(total, logits) is None
    assert target.dtype == tf.int32


def test_feature_dropout_drops_whole_channels_of_c1_and_c4_only():
    stages = [tf.ones([2, 8, 8, 64]), tf.ones([2, 4, 4, 8]), tf.ones([2, 2, 2, 8]), tf.ones([2, 2, 2, 64])]
    dropped = feature_dropout(stages)
    for i in (0, 3):
        values = dropped[i].numpy()
        per_channel = values.reshape(2, -1, 64)
        assert np.all(per_channel.min(1) == per_channel.max(1))  # a channel is kept or dropped whole
        assert set(np.unique(values)) == {0.0, 2.0}  # scaled by 1 / (1 - 0.5)
    for i in (1, 2):
        np.testing.assert_array_equal(dropped[i], stages[i])


def test_the_fp_loss_reaches_the_decoder_and_the_backbone():
    """L_fp trains the head on the dropped-out features and, through them, the backbone (the spec's
    dropout is not a stop-gradient); its target, from the clean pass, carries no gradient."""
    model = weak_strong_model(UniMatch, tau=0.0)
    data = weak_strong_batch()
    u = data["unlabeled"]
    with tf.GradientTape(persistent=True) as tape:
        stages = model.backbone(u["image"], training=True)
        clean = model.head(stages, training=True)
        fp = model.head(feature_dropout(stages), training=True)
        target, confidence = pseudo_labels(clean)
        loss_fp = losses.confident_cross_entropy(target, fp, confidence, 0.0, tf.ones(tf.shape(target)))
    head_kernels = [v for v in model.head.trainable_variables if v.path.endswith("kernel")]
    head_grads = tape.gradient(loss_fp, head_kernels)
    backbone_grads = tape.gradient(loss_fp, model.backbone.trainable_variables)
    # Every head kernel learns from L_fp (the decoder runs on the dropped-out c1 and c4) ...
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in head_grads)
    # ... and so does the backbone, through the dropout (the first stem convolution included).
    stem = [g for g, v in zip(backbone_grads, model.backbone.trainable_variables) if v.path == "conv1_conv/kernel"]
    assert stem and float(tf.reduce_max(tf.abs(stem[0]))) > 0
    assert tape.gradient(loss_fp, clean) is None  # the pseudo-label's side


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
def test_a_step_trains_every_loss_and_changes_the_segmenter(cls):
    model = weak_strong_model(cls, tau=0.0)
    before = [v.numpy().copy() for v in model.segmenter.trainable_variables]
    data = weak_strong_batch(views=cls.strong_views)
    logs = {k: float(v) for k, v in model.train_step(data).items()}
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["loss_s"] > 0 and logs["mask_ratio"] == 1.0
    if cls is UniMatch:
        assert logs["loss_fp"] > 0
        expected = (logs["loss_x"] + 0.5 * logs["loss_s"] + 0.5 * logs["loss_fp"]) / 2
    else:
        expected = (logs["loss_x"] + logs["loss_s"]) / 2
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    # Every kernel, the backbone's and the head's (biases before a batch norm get no gradient).
    kernels = [(b, v) for b, v in zip(before, model.segmenter.trainable_variables) if v.path.endswith("kernel")]
    assert all(not np.allclose(b, v.numpy()) for b, v in kernels)


def test_a_high_threshold_leaves_only_the_supervised_loss():
    model = weak_strong_model(UniMatch, tau=1.01)
    logs = model.train_step(weak_strong_batch())
    assert float(logs["loss_s"]) == 0.0 and float(logs["loss_fp"]) == 0.0 and float(logs["mask_ratio"]) == 0.0
    assert float(logs["loss"]) == pytest.approx(float(logs["loss_x"]) / 2)


@pytest.mark.slow  # suite budget
def test_a_saved_unimatch_run_resumes_and_evaluates(tmp_path, monkeypatch):
    from tests.test_runner import Interrupt

    cfg = configs.get_config("unimatch", "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=4, steps_per_epoch=2, crop_size=32, batch_size=2)
    monkeypatch.setattr(UniMatch, "extra_callbacks", staticmethod(lambda *a: [Interrupt()]))
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, verbose=0)
    monkeypatch.undo()
    assert json.load(open(os.path.join(cfg.workdir, "config.json")))["tau"] == 0.95
    metrics = runner.train(cfg, verbose=0)
    assert metrics["steps"] == 4 and 0.0 <= metrics["miou"] <= 1.0
    evaluated = runner.evaluate(cfg.workdir)
    assert evaluated["miou"] == pytest.approx(metrics["miou"], abs=1e-6)


def test_the_unlabeled_stream_keeps_its_single_strong_view_for_other_methods():
    cfg = configs.get_config("pseudoseg", "synthetic").replace(crop_size=32, batch_size=2)
    from tfsemiseg.data import augment

    u = next(iter(pipeline.unlabeled_stream(runner.load_dataset(cfg), cfg, strong=augment.StrongAugment())))
    assert sorted(u) == ["image", "image_strong", "valid", "valid_strong"]


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
def test_before_semi_start_the_loss_is_the_supervised_one(cls):
    """The from-scratch setting's warm-up: L = L_x before `semi_start`, the paper's mix from it on."""
    model = weak_strong_model(cls, tau=0.0, semi_start=2)
    data = weak_strong_batch(views=cls.strong_views)
    for step in range(3):
        logs = {k: float(v) for k, v in model.train_step(data).items()}
        assert logs["loss_s"] > 0  # computed and logged all along
        if step < 2:
            assert logs["loss"] == pytest.approx(logs["loss_x"], rel=1e-6)
        else:
            assert logs["loss"] < logs["loss_x"]  # halved, plus a smaller unsupervised part


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
@pytest.mark.parametrize("average", [True, False])
def test_the_loss_is_the_mean_of_the_two_terms_or_with_average_losses_off_their_sum(cls, average):
    logs = {k: float(v) for k, v in weak_strong_model(cls, tau=0.0, average_losses=average).train_step(
        weak_strong_batch(views=cls.strong_views)).items()}
    loss_u = 0.5 * logs["loss_s"] + 0.5 * logs["loss_fp"] if cls is UniMatch else logs["loss_s"]
    expected = (logs["loss_x"] + loss_u) / 2 if average else logs["loss_x"] + loss_u
    assert loss_u > 0 and logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_the_strong_views_settings_reach_the_augmentation_and_are_checked(monkeypatch):
    from tfsemiseg.data import augment, build_dataset

    cfg = configs.get_config("fixmatch", "synthetic").override(["color_jitter=0.5,0.5,0.5,0", "p_gray=0",
                                                                 "p_blur=0", "p_cutmix=0"])
    made = []
    real = augment.StrongAugment.unimatch
    monkeypatch.setattr(augment.StrongAugment, "unimatch",
                        classmethod(lambda cls, **kw: made.append(kw) or real.__func__(cls, **kw)))
    data = FixMatch.train_data(build_dataset("synthetic", split="1_16", image_size=32), cfg)
    assert made == [dict(jitter=(0.5, 0.5, 0.5, 0.0), p_gray=0.0, p_blur=0.0)]
    strong = real(jitter=(0.5, 0.5, 0.5, 0.0), p_gray=0.0, p_blur=0.0)
    assert strong.jitter.hue == 0.0 and strong.p_gray == 0.0 and strong.p_blur == 0.0 and strong.p_cutout == 0.0
    boxes = [int(tf.reduce_sum(tf.cast(b["unlabeled"]["box_1"], tf.int32))) for b in data.take(4)]
    assert boxes == [0, 0, 0, 0]  # p_cutmix=0: no box is ever filled
    with_boxes = FixMatch.train_data(build_dataset("synthetic", split="1_16", image_size=32),
                                     configs.get_config("fixmatch", "synthetic").override(["p_cutmix=1"]))
    assert all(int(tf.reduce_sum(tf.cast(b["unlabeled"]["box_1"], tf.int32))) > 0 for b in with_boxes.take(2))
    with pytest.raises(ValueError, match=r"--set color_jitter=.*four numbers"):
        configs.get_config("fixmatch", "synthetic").override(["color_jitter=0.5,0.5"]).validate()
    for name in ("p_gray", "p_blur", "p_cutmix"):
        with pytest.raises(ValueError, match=rf"--set {name}=1.5"):
            configs.get_config("unimatch", "synthetic").override([f"{name}=1.5"]).validate()


def test_distribution_alignment_moves_the_pseudo_labels_toward_the_labeled_class_frequencies():
    """q = Normalize(p * prior / predicted), the running means zero-started and normalised."""
    align = DistributionAlignment(2, momentum=0.5)
    labels = tf.constant([[[0, 1, 1, IGNORE_LABEL]]])  # labeled pixels: class 0 1/3, class 1 2/3
    probs = tf.constant([[[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]]])  # over-predicts class 0
    valid = tf.constant([[1, 1, 1, 0]])  # the last unlabeled pixel is padding: not in the mean
    predicted = np.array([0.9 + 0.8 + 0.6, 0.1 + 0.2 + 0.4]) / 3
    prior = np.array([1 / 3, 2 / 3])
    expected = probs.numpy() * prior / predicted
    expected /= expected.sum(-1, keepdims=True)
    aligned = align(probs, labels, valid).numpy()
    np.testing.assert_allclose(aligned, expected, rtol=1e-4)
    assert aligned.sum(-1) == pytest.approx(np.ones((1, 1, 4)))
    assert list(aligned[0, 0].argmax(-1)) == [0, 1, 1, 1]  # two pixels' pseudo-labels move to class 1
    # A second step: running means, momentum m = 0.5, zero-started and normalised, so the steps weigh
    # m (1 - m) and (1 - m): (m a + b) / (1 + m), with no pull toward the zero start.
    align(tf.constant([[[1.0, 0.0]]])[None], tf.constant([[[0]]]), tf.constant([[1]]))
    for variable, first in ((align.prior, prior), (align.predicted, predicted)):
        np.testing.assert_allclose(variable.numpy() / variable.numpy().sum(), (0.5 * first + [1, 0]) / 1.5, rtol=1e-5)


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
def test_distribution_alignment_is_off_by_default_and_changes_the_pseudo_labels_when_on(cls):
    assert configs.get_config(cls.__name__.lower(), "synthetic").distribution_alignment is False
    assert weak_strong_model(cls).alignment is None
    cfg = configs.get_config(cls.__name__.lower(), "synthetic").override(["distribution_alignment=true"])
    model = cls.create(cfg, runner.load_dataset(cfg.replace(crop_size=32)))
    data = weak_strong_batch(views=cls.strong_views)
    model.train_step(data)
    # The labeled batch's classes (0-2, uniform) are counted in the running prior; the others stay 0.
    prior = model.alignment.prior.numpy()
    assert prior[:3].sum() == pytest.approx(0.01, rel=1e-4) and np.all(prior[3:] == 0)
    assert model.alignment.predicted.numpy().sum() == pytest.approx(0.01, rel=1e-4)
    # Its state is part of the method's weights, so a resumed run continues the running means.
    assert {"prior", "predicted"} <= {v.name for v in model.non_trainable_variables}


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
def test_the_head_has_no_dropout_by_default_and_the_v3plus_dropouts_with_head_dropout(cls):
    def dropouts(cfg):
        model = cls.create(cfg, runner.load_dataset(cfg.replace(crop_size=32)))
        return sorted(layer.name for layer in model.segmenter._flatten_layers()
                      if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D)))

    cfg = configs.get_config(cls.__name__.lower(), "synthetic")
    assert dropouts(cfg) == []
    assert dropouts(cfg.override(["head_dropout=true"])) == ["head_aspp_dropout", "head_dropout"]


@pytest.mark.parametrize("cls", [UniMatch, FixMatch])
def test_with_ema_the_pseudo_labels_come_from_the_mean_teacher_which_follows_the_segmenter(cls):
    cfg = configs.get_config(cls.__name__.lower(), "synthetic")
    assert cfg.ema == 0.0 and weak_strong_model(cls).teacher is None
    assert cls.create(cfg.override(["ema=0.99"]), runner.load_dataset(cfg.replace(crop_size=32))).teacher is not None

    model = weak_strong_model(cls, tau=0.0, ema=0.99)
    rng = np.random.default_rng(1)
    model.teacher.set_weights([w + rng.normal(0, 0.5, w.shape).astype(w.dtype) if w.ndim > 1 else w
                               for w in model.teacher.get_weights()])  # a teacher that labels otherwise
    data = weak_strong_batch(views=cls.strong_views)
    # s' = u_w and no CutMix: the strong loss is CE of the segmenter on u_w against the teacher's labels.
    for i in range(1, cls.strong_views + 1):
        data["unlabeled"][f"image_strong_{i}"] = data["unlabeled"]["image"]
        data["unlabeled"][f"box_{i}"] = tf.zeros_like(data["unlabeled"][f"box_{i}"])
    x, u_w, valid = data["labeled"]["image"], data["unlabeled"]["image"], data["unlabeled"]["valid"] > 0
    logits_s = model.segmenter(u_w, training=True)
    expected = {}
    for source, logits_w in (("teacher", model.teacher(u_w, training=True)),
                             ("own", model.segmenter(tf.concat([x, u_w], 0), training=True)[2:])):
        target, confidence = pseudo_labels(logits_w)
        expected[source] = float(losses.confident_cross_entropy(target, logits_s, confidence, 0.0, valid))
    assert expected["teacher"] != pytest.approx(expected["own"], rel=1e-2)

    teacher_before = [w.numpy() for w in model.teacher.trainable_weights]
    assert float(model.train_step(data)["loss_s"]) == pytest.approx(expected["teacher"], rel=1e-4)
    # Step 1: the teacher moves halfway to the stepped segmenter (m = min(0.99, 1 - 1/2)); its BatchNorm
    # statistics, which its training-mode pass does not use, also moved with that pass.
    for t, b, s in zip(model.teacher.trainable_weights, teacher_before, model.segmenter.trainable_weights):
        np.testing.assert_allclose(t.numpy(), 0.5 * b + 0.5 * s.numpy(), rtol=1e-4, atol=1e-6)
    # The teacher is not the optimizer's.
    assert {id(v) for v in model.teacher.weights}.isdisjoint(id(v) for v in model.optimized_variables())


def test_the_mean_teacher_is_saved_and_restored_with_the_method(tmp_path):
    """Backups and checkpoints save the method's weights: a resumed run must get its teacher back, not a
    copy of the segmenter."""
    saved, restored = weak_strong_model(FixMatch, ema=0.99), weak_strong_model(FixMatch, ema=0.99)
    saved.teacher.set_weights([w + 1.0 for w in saved.teacher.get_weights()])
    saved.save_weights(str(tmp_path / "method.weights.h5"))
    restored.load_weights(str(tmp_path / "method.weights.h5"))
    for t, r in zip(saved.teacher.get_weights(), restored.teacher.get_weights()):
        np.testing.assert_array_equal(t, r)
    for s, r in zip(saved.segmenter.get_weights(), restored.segmenter.get_weights()):
        np.testing.assert_array_equal(s, r)

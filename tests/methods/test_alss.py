import json
import os

import numpy as np
import pytest
import tensorflow as tf

import configs
from tfsemiseg import losses, optim
from tfsemiseg.methods.alss import AdvSemiSeg
from tfsemiseg.models.discriminator import build_discriminator
from tfsemiseg.models.segmenters import build_segmenter
from tfsemiseg.runner import train


def small_cfg(**changes):
    cfg = configs.get_config("alss", "synthetic").replace(crop_size=32, batch_size=2, iterations=4,
                                                          steps_per_epoch=2)
    return cfg.replace(**changes)


def batch(num_classes=3, size=32, ignore_first_row=True, seed=0):
    rng = np.random.default_rng(seed)
    def labeled():
        label = rng.integers(0, num_classes, (2, size, size))
        if ignore_first_row:
            label[:, 0] = 255
        return {"image": tf.constant(rng.uniform(0, 255, (2, size, size, 3)), tf.float32),
                "label": tf.constant(label, tf.uint8)}
    return {"labeled": labeled(), "real": labeled(),
            "unlabeled": {"image": tf.constant(rng.uniform(0, 255, (2, size, size, 3)), tf.float32),
                          "valid": tf.ones((2, size, size), tf.uint8)}}


def make_model(**kwargs):
    model = AdvSemiSeg(build_segmenter("deeplabv2", "tiny", 3), build_discriminator(3), 3, **kwargs)
    model.compile(optimizer=optim.poly_sgd(0.01, 100), d_optimizer=optim.poly_adam(1e-4, 100))
    return model


def test_semi_targets_threshold_and_ignore():
    model = make_model(T_semi=0.2)
    logits_u = tf.constant([[[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]]])
    # sigmoid(-2) = 0.12 < 0.2, sigmoid(0) = 0.5 > 0.2, last pixel invalid (padding)
    d_logits = tf.constant([[[[-2.0], [0.0], [5.0]]]])
    valid = tf.constant([[[True, True, False]]])
    targets, confident = model.semi_targets(logits_u, d_logits, valid)
    assert targets.numpy().tolist() == [[[255, 1, 255]]]
    assert confident.numpy().tolist() == [[[False, True, False]]]


def _run_step(model, data):
    return {k: float(v) for k, v in model.train_step(data).items()}


def test_loss_terms_match_hand_computation_and_semi_start_switch():
    data = batch()
    model = make_model(semi_start=1, T_semi=0.0)  # T_semi 0: every valid unlabeled pixel is a target
    seg_weights = [w.numpy() for w in model.segmenter.weights]
    x, y = data["labeled"]["image"], data["labeled"]["label"]
    u = data["unlabeled"]["image"]
    logits = model.segmenter(x, training=True)
    logits_u = model.segmenter(u, training=True)
    d_x = model.discriminator(tf.nn.softmax(logits))[..., 0].numpy()
    d_u = model.discriminator(tf.nn.softmax(logits_u))[..., 0].numpy()
    valid = y.numpy() != 255
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731, BCE(z, 1) = softplus(-z)
    expected_adv = softplus(-d_x)[valid].mean()
    expected_semi_adv = softplus(-d_u).mean()
    # put the weights back (the forward passes above updated BN statistics only)
    for w, v in zip(model.segmenter.weights, seg_weights):
        w.assign(v)

    logs = _run_step(model, data)  # iteration 0: before semi_start
    assert logs["loss_semi"] == 0.0
    assert logs["loss_adv"] == pytest.approx(expected_adv, rel=1e-3)
    assert logs["loss_semi_adv"] == pytest.approx(expected_semi_adv, rel=1e-3)
    assert logs["loss_ce"] == pytest.approx(float(losses.cross_entropy(y, logits)), rel=1e-3)
    assert 0.0 <= logs["d_acc_real"] <= 1.0 and logs["semi_fraction"] == 1.0
    model.reset_metrics()
    logs = _run_step(model, data)  # iteration 1: the semi loss is on
    assert logs["loss_semi"] > 0.0


def test_discriminator_loss_ignores_ignore_pixels():
    """Changing the discriminator's input only at ignore pixels does not change loss_d."""
    model = make_model()
    data = batch()
    real = data["real"]["label"].numpy()
    real_maps = tf.one_hot(real.astype(np.int32), 3)
    assert float(tf.reduce_sum(real_maps[:, 0])) == 0.0  # ignore pixels are all-zero one-hot rows
    d_real = model.discriminator(real_maps)
    valid = real != 255
    full = float(losses.binary_cross_entropy(d_real, 1.0, valid))
    assert full == pytest.approx(np.log1p(np.exp(-d_real.numpy()[..., 0]))[valid].mean(), rel=1e-5)


def _twins(**kwargs_b):
    """Two models with identical weights; the second with different loss weights if given."""
    a, b = make_model(semi_start=0), make_model(semi_start=0, **kwargs_b)
    b.segmenter.set_weights(a.segmenter.get_weights())
    b.discriminator.set_weights(a.discriminator.get_weights())
    return a, b


def _same(va, vb):
    return all(np.allclose(x.numpy(), y.numpy(), atol=1e-6) for x, y in zip(va, vb))


def test_discriminator_loss_never_moves_the_segmenter():
    """A whole train_step with another "real" batch (which only enters L_D) updates S identically."""
    data = batch()
    a, b = _twins()
    _run_step(a, data)
    _run_step(b, {**data, "real": batch(seed=1)["real"]})
    assert _same(a.segmenter.trainable_variables, b.segmenter.trainable_variables)
    assert not _same(a.discriminator.trainable_variables, b.discriminator.trainable_variables)


def test_segmenter_losses_never_move_the_discriminator():
    """A whole train_step with other adversarial / semi weights (which only enter L_seg) updates D identically."""
    data = batch()
    a, b = _twins(lambda_adv=1.0, lambda_semi_adv=1.0, lambda_semi=1.0)
    _run_step(a, data)
    _run_step(b, data)
    assert _same(a.discriminator.trainable_variables, b.discriminator.trainable_variables)
    assert not _same(a.segmenter.trainable_variables, b.segmenter.trainable_variables)


def test_segmenter_update_leaves_discriminator_unchanged():
    model = make_model(semi_start=0)
    data = batch()
    d_before = [w.numpy() for w in model.discriminator.trainable_variables]
    with tf.GradientTape() as tape:
        logits = model.segmenter(data["labeled"]["image"], training=True)
        d = model.discriminator(tf.nn.softmax(logits), training=False)
        loss = losses.cross_entropy(data["labeled"]["label"], logits) + losses.binary_cross_entropy(d, 1.0)
    model.update_segmenter(tape, loss)
    for a, w in zip(d_before, model.discriminator.trainable_variables):
        np.testing.assert_array_equal(a, w.numpy())


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_fit_on_synthetic_lowers_loss_ce_and_writes_checkpoint_and_metrics(tmp_path):
    cfg = small_cfg(workdir=str(tmp_path / "alss"), iterations=60, steps_per_epoch=20, semi_start=20,
                    batch_size=4, lr=0.02)
    metrics = train(cfg, verbose=0)
    history = json.load(open(os.path.join(cfg.workdir, "metrics.json")))
    assert history == metrics and metrics["method"] == "alss" and metrics["steps"] == 60
    assert os.path.exists(os.path.join(cfg.workdir, "checkpoints", "ckpt.weights.h5"))
    assert os.path.exists(os.path.join(cfg.workdir, "final", "segmenter.keras"))
    events = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cfg.workdir, "logs")) for f in fs
              if "events" in f]
    # ALSS's own callback puts the discriminator's learning rate in the logs TensorBoard writes.
    tags = {v.tag for path in events for event in tf.compat.v1.train.summary_iterator(path) for v in event.summary.value}
    assert "epoch_d_learning_rate" in tags and "epoch_loss_ce" in tags


def test_visualize_feeds_probabilities_to_the_discriminator():
    model = make_model(T_semi=0.2)
    images = batch()["labeled"]["image"]
    maps = model.visualize(images)
    probs = tf.nn.softmax(model.segmenter(images, training=False))
    expected = tf.sigmoid(model.discriminator(probs))[..., 0]
    np.testing.assert_allclose(maps["confidence"], expected, atol=1e-5)
    semi = maps["semi_mask"].numpy()
    assert ((semi == 255) == (expected.numpy() <= 0.2)).all()

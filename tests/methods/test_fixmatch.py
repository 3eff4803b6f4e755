"""FixMatch: UniMatch's weak-to-strong step with one strong view and no feature perturbation. What it
shares with UniMatch (thresholds, CutMix, EMA, distribution alignment, the loss mix) is tested there,
on both methods."""

import pytest
import tensorflow as tf

import configs
from tests.conftest import weak_strong_batch, weak_strong_model
from tfsemiseg import losses, runner
from tfsemiseg.methods import METHODS
from tfsemiseg.methods.fixmatch import FixMatch
from tfsemiseg.methods.unimatch import UniMatch, pseudo_labels


def test_fixmatch_is_registered_with_its_settings():
    assert METHODS["fixmatch"] is FixMatch
    city = configs.get_config("fixmatch", "cityscapes")
    assert (city.crop_size, city.head_lr_mult, city.tau, city.ohem) == (801, 1.0, 0.0, True)


def test_the_stream_gives_the_weak_view_and_one_strong_view_with_its_box():
    cfg = configs.get_config("fixmatch", "synthetic").replace(crop_size=32, batch_size=4, scale_range=(1.0, 1.0))
    dataset = runner.load_dataset(cfg)
    assert FixMatch.strong_views == 1 and UniMatch.strong_views == 2
    assert sorted(next(iter(FixMatch.train_data(dataset, cfg)))["unlabeled"]) == \
        ["box_1", "image", "image_strong_1", "valid"]


@pytest.mark.parametrize("one_pass", [False, True])
def test_fixmatch_one_pass_batches_x_u_w_and_the_strong_view_together(one_pass):
    """With one_pass, the strong view's logits come from the pass over [x ; u_w ; s'] (BatchNorm over the
    whole batch); without, from a pass over s' alone. Checked with s' = u_w and no CutMix."""
    model = weak_strong_model(FixMatch, tau=0.0, one_pass=one_pass)
    data = weak_strong_batch(views=1)
    data["unlabeled"]["image_strong_1"] = data["unlabeled"]["image"]
    data["unlabeled"]["box_1"] = tf.zeros_like(data["unlabeled"]["box_1"])
    x, u_w, valid = data["labeled"]["image"], data["unlabeled"]["image"], data["unlabeled"]["valid"] > 0
    if one_pass:
        logits_w = logits_s = model.segmenter(tf.concat([x, u_w, u_w], 0), training=True)[2:4]
    else:
        logits_w = model.segmenter(tf.concat([x, u_w], 0), training=True)[2:]
        logits_s = model.segmenter(u_w, training=True)
    target, confidence = pseudo_labels(logits_w)
    expected = float(losses.confident_cross_entropy(target, logits_s, confidence, 0.0, valid))
    assert float(model.train_step(data)["loss_s"]) == pytest.approx(expected, rel=1e-4)
    cfg = configs.get_config("fixmatch", "synthetic")
    assert cfg.one_pass is False
    assert FixMatch.create(cfg.override(["one_pass=true"]), runner.load_dataset(cfg.replace(crop_size=32))).one_pass

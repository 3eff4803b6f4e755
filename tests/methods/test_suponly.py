import numpy as np
import pytest
import tensorflow as tf

import configs
from tfsemiseg import losses, optim
from tfsemiseg.data import build_dataset, labeled_stream
from tfsemiseg.methods import SupOnly
from tfsemiseg.inference import sliding_window_scores
from tfsemiseg.methods.base import SegmentationMethod
from tfsemiseg.models.segmenters import backbone_of, build_segmenter, head_of


@pytest.fixture
def cfg():
    return configs.get_config("suponly", "synthetic").replace(crop_size=32, batch_size=4, iterations=40)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(cfg):
    ds = build_dataset("synthetic", split="full")
    batch = next(iter(labeled_stream(ds, cfg)))
    model = SupOnly.create(cfg, ds)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=10, epochs=3, verbose=0)
    losses = history.history["loss_ce"]
    assert losses[-1] < 0.7 * losses[0]


def _one_step(cfg):
    """Head and backbone kernels before one `fit` step, their taped gradients, the step's moves and
    its LR. DeepLab-v2: no dropout, so the taped gradient is the one fit applies."""
    cfg = cfg.replace(head_lr_mult=10.0, arch="deeplabv2", aspp_rates=(1, 2, 3, 4))
    ds = build_dataset("synthetic", split="full")
    batch = next(iter(labeled_stream(ds, cfg)))
    model = SupOnly.create(cfg, ds)
    seg = model.segmenter
    kernels = head_of(seg).get_layer("head_aspp_1").kernel, backbone_of(seg).get_layer("conv1_conv").kernel
    with tf.GradientTape() as tape:
        loss = losses.cross_entropy(batch["label"], seg(batch["image"], training=True))
    grads = [g.numpy() for g in tape.gradient(loss, kernels)]
    before = [k.numpy() for k in kernels]
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    lr = float(model.optimizer.learning_rate) / (1 - 1 / cfg.iterations) ** 0.9  # lr at step 0
    return model, before, grads, [w - k.numpy() for w, k in zip(before, kernels)], lr


def test_head_variables_get_the_head_lr_multiplier(cfg):
    """With lr multiplier m, one SGD step (no momentum yet, no decay) moves head weights m times as far."""
    _, _, (g_head, g_back), (moved_head, moved_back), lr = _one_step(cfg.replace(weight_decay=0.0))
    np.testing.assert_allclose(moved_head, 10 * lr * g_head, rtol=2e-2, atol=1e-7)
    np.testing.assert_allclose(moved_back, lr * g_back, rtol=2e-2, atol=1e-7)


def test_weight_decay_in_the_gradient_is_the_papers_and_gets_the_head_multiplier(cfg):
    """`weight_decay_in_gradient`: one step moves w by m * lr * (g + wd * w), m = 10 for the head."""
    wd = 0.05
    model, (h0, b0), (g_head, g_back), (moved_head, moved_back), lr = _one_step(
        cfg.replace(weight_decay=wd, weight_decay_in_gradient=True))
    assert model.optimizer.weight_decay is None  # not also decoupled
    np.testing.assert_allclose(moved_head, 10 * lr * (g_head + wd * h0), rtol=2e-2, atol=1e-7)
    np.testing.assert_allclose(moved_back, lr * (g_back + wd * b0), rtol=2e-2, atol=1e-7)


@pytest.mark.parametrize("name", ["alss", "pseudoseg"])
def test_every_method_takes_the_decay_the_optimizer_leaves(name):
    """With `weight_decay_in_gradient`, the optimizer does not decay and the method adds it, in every
    method (one that forgot would train without any decay)."""
    from tfsemiseg.methods import get_method

    ds = build_dataset("synthetic", split="1_16", image_size=32)
    for in_gradient in (True, False):
        cfg = configs.get_config(name, "synthetic").replace(crop_size=32, weight_decay=1e-3,
                                                           weight_decay_in_gradient=in_gradient)
        model = get_method(name).create(cfg, ds)
        assert model.weight_decay == (1e-3 if in_gradient else 0.0)
        assert model.optimizer.weight_decay == (None if in_gradient else pytest.approx(1e-3))


def test_weight_decay_is_decoupled_and_outside_the_momentum():
    """What optim.py and BUILD.md say: Keras' decay (w -= lr * wd * w), not L2 in the gradient
    (which would pass through the momentum: 0.9711 after two steps here, not 0.9801)."""
    w = tf.Variable([1.0])
    sgd = optim.poly_sgd(0.1, 10 ** 9, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        sgd.apply([tf.zeros([1])], [w])
    assert float(w[0]) == pytest.approx(0.99 ** 2, rel=1e-6)


def test_poly_schedule_reaches_zero():
    schedule = optim.poly_schedule(0.1, 10)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(5)) == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-5)
    assert float(schedule(10)) == 0.0


def test_whole_image_evaluation_pads_odd_sizes_and_ignores_void():
    seg = build_segmenter("deeplabv2", "tiny", 3)
    model = SegmentationMethod(seg, 3)
    model.compile()
    images = tf.random.uniform([2, 37, 53, 3], 0, 255)
    labels = tf.fill([2, 37, 53], 255)
    labels = tf.tensor_scatter_nd_update(labels, [[0, 0, 0]], [1])
    pred = model.predict_scores(images)
    assert pred.shape == (2, 37, 53, 3)
    result = model.evaluate(tf.data.Dataset.from_tensors({"image": images, "label": labels}), return_dict=True,
                            verbose=0)
    cm = model.miou.total_cm.numpy()
    assert cm.sum() == 1  # only the one non-void pixel was counted
    assert result["miou"] in (0.0, 1.0)


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    """With a per-pixel predictor, averaging overlapping windows must give the whole-image answer."""
    predict = lambda x: x * 0.01  # noqa: E731 (logits = scaled pixels, 3 "classes")
    images = tf.random.uniform([1, 50, 70, 3], 0, 255)
    scores = sliding_window_scores(predict, images, window=32, stride=20)
    np.testing.assert_allclose(scores, tf.nn.softmax(predict(images)), atol=1e-5)
    small = sliding_window_scores(predict, images[:, :20, :25], window=32, stride=20)
    assert small.shape == (1, 20, 25, 3)

import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.data import build_dataset
from tfsemiseg.data.synthetic import NUM_CLASSES, render


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = render(5, seed=0), render(5, seed=0), render(5, seed=1)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def test_render_has_objects_of_several_classes():
    labels = np.stack([render(i)["label"].numpy() for i in range(16)])
    assert labels.shape == (16, 64, 64) and labels.max() < NUM_CLASSES
    present = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
    assert (present > 0).all()  # every shape appears
    assert 0.5 < present[0] / labels.size < 0.95  # background dominates, objects are not tiny


def _hues(images):
    return tf.image.rgb_to_hsv(images / 255.0).numpy()[..., 0]


@pytest.mark.slow  # suite budget
def test_hue_hints_at_the_class_but_does_not_decide_it():
    """Objects' hues cluster around their class's centre; the background takes every hue, so hue
    alone cannot tell an object from the background (shape and context must)."""
    images = np.stack([render(i)["image"].numpy() for i in range(64)]).astype(np.float32)
    labels = np.stack([render(i)["label"].numpy() for i in range(64)])
    hues = _hues(images)
    centres = np.arange(NUM_CLASSES - 1) / (NUM_CLASSES - 1)
    band = lambda h, c: np.abs((h - c + 0.5) % 1.0 - 0.5) < 0.2  # noqa: E731  (HUE_JITTER + 0.1)
    for c in range(1, NUM_CLASSES):
        inside = band(hues[labels == c], centres[c - 1]).mean()
        assert inside > 0.6, (c, inside)  # mostly in its band, noise and stripes aside
    background = hues[labels == 0]
    for centre in centres:  # every class's band holds a fair share of background pixels
        assert band(background, centre).mean() > 0.1


def test_synthetic_dataset_splits():
    ds = build_dataset("synthetic", split="1_16")
    assert len(ds.labeled) == 32 and len(ds.unlabeled) == 480 and len(ds.keys("val")) == 128
    assert not set(ds.labeled) & set(ds.keys("val"))

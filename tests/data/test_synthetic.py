import numpy as np

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


def test_colour_does_not_give_the_class():
    """Class mean colours differ far less than colours within a class: class is given by shape."""
    images = np.stack([render(i)["image"].numpy() for i in range(64)]).astype(float)
    labels = np.stack([render(i)["label"].numpy() for i in range(64)])
    means = [images[labels == c].mean() for c in range(1, NUM_CLASSES)]
    spread_within = min(images[labels == c].std() for c in range(1, NUM_CLASSES))
    assert np.ptp(means) < 0.5 * spread_within


def test_synthetic_dataset_splits():
    ds = build_dataset("synthetic", split="1_16")
    assert len(ds.labeled) == 32 and len(ds.unlabeled) == 480 and len(ds.keys("val")) == 128
    assert not set(ds.labeled) & set(ds.keys("val"))

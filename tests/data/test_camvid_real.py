"""The real CamVid copy beside the repository (../shared/data/camvid), when present. Slow: run with -m slow."""

import os

import numpy as np
import pytest

from tfsemiseg.data import build_dataset

CAMVID = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "camvid")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.isdir(CAMVID), reason="no ../shared/data/camvid")]


def test_camvid_splits_and_labels():
    ds = build_dataset("camvid", CAMVID, "1_8")
    assert (len(ds.labeled), len(ds.unlabeled), len(ds.keys("val"))) == (46, 321, 101)
    labels = np.stack([e["label"].numpy() for e in ds.examples("val").take(10)])
    assert labels.shape[1:] == (360, 480)
    assert set(np.unique(labels)) <= set(range(11)) | {255}

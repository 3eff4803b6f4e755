"""Shared fixtures: small fabricated dataset trees (no downloads) and a quiet, seeded TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tfsemiseg  # noqa: E402,F401  (before TensorFlow, as the scripts: oneDNN kernels on every x86 CPU)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")


def write_image(path, height=24, width=32, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def write_label(path, label, palette=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(label, np.uint8), mode="L" if palette is None else "P")
    if palette is not None:
        img.putpalette(palette)
    img.save(path)


def random_label(height, width, num_classes, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, (height, width))
    if ignore is not None:
        label[0, :] = ignore
    return label


@pytest.fixture
def camvid_tree(tmp_path):
    """A CamVid-like SegNet tree: 8 train, 3 val images of 24x32, 11 classes + void 11, splits/1_4."""
    root = tmp_path / "camvid"
    names = {"train": [f"f{i:03d}.png" for i in range(8)], "val": [f"v{i:03d}.png" for i in range(3)]}
    for split, files in names.items():
        for i, name in enumerate(files):
            write_image(str(root / split / name), seed=i)
            write_label(str(root / f"{split}annot" / name), random_label(24, 32, 11, seed=i, ignore=11))
        (root / f"{split}.txt").write_text("\n".join(files) + "\n")
    (root / "splits" / "1_4").mkdir(parents=True)
    (root / "splits" / "1_4" / "labeled.txt").write_text("\n".join(names["train"][:2]) + "\n")
    (root / "splits" / "1_4" / "unlabeled.txt").write_text("\n".join(names["train"][2:]) + "\n")
    return str(root)


@pytest.fixture
def voc_tree(tmp_path):
    """A mini VOC2012 + SegmentationClassAug tree: train.txt (3), val.txt (2), 8 aug-only images."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(13)]
    for i, name in enumerate(ids):
        write_image(str(root / "JPEGImages" / f"{name}.jpg"), seed=i)
        write_label(str(root / "SegmentationClassAug" / f"{name}.png"), random_label(24, 32, 21, seed=i, ignore=255))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[3:5]) + "\n")
    return str(root)


@pytest.fixture
def cityscapes_tree(tmp_path):
    root = tmp_path / "cityscapes"
    for split, cities in (("train", ("aachen", "bonn")), ("val", ("lindau",))):
        for city in cities:
            for i in range(2):
                stem = f"{city}_000000_{i:06d}"
                write_image(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"), seed=i)
                write_label(str(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"),
                            random_label(24, 32, 19, seed=i, ignore=255))
    return str(root)


def for_method(cfg, **settings):
    """`cfg` with the `settings` that are its own or shared; another method's settings are left out
    (tests that run several methods with one list, e.g. ALSS's semi_start beside ST's tta_scales)."""
    known = cfg.settings()
    return cfg.replace(**{k: v for k, v in settings.items() if k in known})

"""Shared fixtures: small fabricated dataset trees (no downloads) and a quiet, seeded TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tfsemiseg  # noqa: E402,F401  (before TensorFlow, as the scripts: oneDNN kernels on every x86 CPU)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def benchmark_script(name):
    """A script of benchmarks/ (not a package) loaded as a module, e.g. `benchmark_script("benchmark")`."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def weak_strong_model(cls, num_classes=3, **kwargs):
    """A weak-to-strong method (UniMatch, FixMatch) on a tiny DeepLab-v3+, compiled with poly SGD."""
    from tfsemiseg import optim
    from tfsemiseg.models.segmenters import build_segmenter

    model = cls(build_segmenter("deeplabv3plus", "tiny", num_classes, output_stride=16, aspp_rates=(1, 2, 3),
                                dropout=False, head_channels=16), num_classes, **kwargs)
    model.compile(optimizer=optim.poly_sgd(0.01, 100))
    return model


def weak_strong_batch(size=32, seed=0, views=2):
    """{"labeled": x, y; "unlabeled": the weak view, `views` strong views with their CutMix boxes, and a
    padding mask (the bottom 4 rows padded)}; 2 images each, labels in 0-2."""
    rng = np.random.default_rng(seed)
    image = lambda: tf.constant(rng.uniform(0, 255, (2, size, size, 3)), tf.float32)  # noqa: E731
    valid = np.ones((2, size, size), np.uint8)
    valid[:, -4:] = 0
    unlabeled = {"image": image(), "valid": tf.constant(valid)}
    for i in range(1, views + 1):
        box = np.zeros((2, size, size), np.uint8)
        box[0, 4:12, 4:12] = 1
        unlabeled.update({f"image_strong_{i}": image(), f"box_{i}": tf.constant(box)})
    return {"labeled": {"image": image(), "label": tf.constant(rng.integers(0, 3, (2, size, size)), tf.uint8)},
            "unlabeled": unlabeled}


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

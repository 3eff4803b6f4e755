import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import write_image, write_label
from tfsemiseg.data import DataError, build_dataset, explain_data_errors, resolve_split
from tfsemiseg.data.io import IGNORE_LABEL, VOC_COLORMAP


def first(ds):
    return next(iter(ds))


def test_camvid_split_folder_and_void_becomes_ignore(camvid_tree):
    ds = build_dataset("camvid", camvid_tree, "1_4")
    assert ds.num_classes == 11 and ds.class_names[0] == "sky"
    assert [os.path.basename(p) for p, _ in ds.labeled] == ["f000.png", "f001.png"]
    assert len(ds.unlabeled) == 6
    ex = first(ds.examples("labeled"))
    assert ex["image"].shape == (24, 32, 3) and ex["image"].dtype == tf.uint8
    label = ex["label"].numpy()
    assert (label[0] == IGNORE_LABEL).all()  # void (11) on disk
    assert label[1:].max() < 11
    assert len(list(ds.examples("val"))) == 3


def test_unlabeled_examples_never_read_labels(camvid_tree):
    ds = build_dataset("camvid", camvid_tree, "1_4")
    for _, label in ds.unlabeled:
        os.remove(label)
    assert set(first(ds.examples("unlabeled", with_label=False))) == {"image"}


def test_voc_1464_split_and_pool(voc_tree):
    ds = build_dataset("voc", voc_tree, "1464")
    assert ds.num_classes == 21
    assert len(ds.labeled) == 3  # train.txt
    assert len(ds.unlabeled) == 8  # train_aug (all labels minus val) minus train
    assert len(ds.keys("val")) == 2
    ex = first(ds.examples("labeled"))
    assert ex["label"].shape == ex["image"].shape[:2]


def test_voc_fraction_is_reproducible(voc_tree):
    a = build_dataset("voc", voc_tree, "1_2", seed=3)
    b = build_dataset("voc", voc_tree, "1_2", seed=3)
    c = build_dataset("voc", voc_tree, "1_2", seed=4)
    assert a.labeled == b.labeled and len(a.labeled) == round(11 / 2)
    assert a.labeled != c.labeled
    assert not set(a.labeled) & set(a.unlabeled)


def test_split_files_in_stpp_format(voc_tree, tmp_path):
    split = tmp_path / "mysplit"
    split.mkdir()
    (split / "labeled.txt").write_text("JPEGImages/2007_000005.jpg SegmentationClass/2007_000005.png\n")
    (split / "unlabeled.txt").write_text("2007_000006\n2007_000007\n")
    ds = build_dataset("voc", voc_tree, str(split))
    assert [os.path.basename(p) for p, _ in ds.labeled] == ["2007_000005.jpg"]
    assert [os.path.basename(p) for p, _ in ds.unlabeled] == ["2007_000006.jpg", "2007_000007.jpg"]


def test_voc_palette_labels_are_mapped_to_indices(voc_tree):
    label = np.full((24, 32), 15, np.uint8)
    label[:4] = 255
    write_label(os.path.join(voc_tree, "SegmentationClassAug", "2007_000000.png"), label,
                palette=VOC_COLORMAP.astype(np.uint8).ravel().tolist())
    ds = build_dataset("voc", voc_tree, "1464")
    ex = first(ds.examples("labeled"))
    np.testing.assert_array_equal(ex["label"].numpy(), label)


def test_cityscapes_reader(cityscapes_tree):
    ds = build_dataset("cityscapes", cityscapes_tree, "1_2")
    assert ds.num_classes == 19 and len(ds.labeled) == 2 and len(ds.unlabeled) == 2
    assert len(ds.keys("val")) == 2
    assert first(ds.examples("val"))["label"].shape == (24, 32)


def test_resolve_split_variants():
    pool = [f"x{i}" for i in range(16)]
    assert resolve_split("full", pool, 0) == (sorted(pool), [])
    labeled, unlabeled = resolve_split("1_8", pool, 0)
    assert len(labeled) == 2 and len(unlabeled) == 14
    assert len(resolve_split("5", pool, 0)[0]) == 5
    with pytest.raises(DataError, match="Unknown --split"):
        resolve_split("half", pool, 0)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        build_dataset("voc", str(tmp_path / "nowhere"), "1464")


def test_missing_file_is_named(camvid_tree):
    os.remove(os.path.join(camvid_tree, "trainannot", "f001.png"))
    with pytest.raises(DataError, match="f001.png"):
        build_dataset("camvid", camvid_tree, "1_4")


def test_empty_split_is_an_error(camvid_tree):
    open(os.path.join(camvid_tree, "splits", "1_4", "labeled.txt"), "w").close()
    with pytest.raises(DataError, match="no labeled images"):
        build_dataset("camvid", camvid_tree, "1_4")


def _consume(ds, subset):
    with explain_data_errors(ds.paths(subset)):
        list(ds.examples(subset))


def test_size_mismatch_is_named(camvid_tree):
    write_label(os.path.join(camvid_tree, "valannot", "v001.png"), np.zeros((10, 10)))
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with pytest.raises(DataError, match=r"sizes differ.*v001.png"):
        _consume(ds, "val")


def test_label_out_of_range_is_named(camvid_tree):
    write_label(os.path.join(camvid_tree, "valannot", "v002.png"), np.full((24, 32), 40))
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with pytest.raises(DataError, match=r"outside \[0, 11\).*v002.png"):
        _consume(ds, "val")


def test_corrupt_image_is_named(camvid_tree):
    with open(os.path.join(camvid_tree, "val", "v000.png"), "wb") as f:
        f.write(b"not an image at all")
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with pytest.raises(DataError, match="v000.png"):
        _consume(ds, "val")


def test_truncated_image_is_named(camvid_tree):
    path = os.path.join(camvid_tree, "val", "v001.png")
    write_image(path, 240, 320)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    write_label(os.path.join(camvid_tree, "valannot", "v001.png"), np.zeros((240, 320)))
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with pytest.raises(DataError, match=r"v001.png.*truncated or corrupt"):
        _consume(ds, "val")


def test_unknown_eval_split_is_named(camvid_tree):
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with pytest.raises(DataError, match=r"No split 'test' in .*: neither test.txt nor testannot/ exists "
                                        r"\(splits there: train, val\)\. Fix --eval_split\."):
        ds.keys("test")


# -- labels read as they are, or refused with the file's name (never silently misread) --------------

def _camvid_label(camvid_tree, name="v002.png"):
    return os.path.join(camvid_tree, "valannot", name)


def _val_labels(camvid_tree):
    ds = build_dataset("camvid", camvid_tree, "1_4")
    with explain_data_errors(ds.paths("val")):
        return [ex["label"].numpy() for ex in ds.examples("val")]


def test_16_bit_label_is_read_by_value(camvid_tree):
    from PIL import Image

    label = np.tile(np.arange(12, dtype=np.uint16), (24, 3))[:, :32]  # 0..10 and the void 11
    Image.fromarray(label).save(_camvid_label(camvid_tree))
    read = _val_labels(camvid_tree)[2]
    np.testing.assert_array_equal(read, np.where(label == 11, IGNORE_LABEL, label))


def test_16_bit_label_above_255_is_refused(camvid_tree):
    from PIL import Image

    Image.fromarray(np.full((24, 32), 300, np.uint16)).save(_camvid_label(camvid_tree))
    with pytest.raises(DataError, match=r"16-bit label with values above 255.*v002.png"):
        _val_labels(camvid_tree)


def test_grey_rgb_label_is_read_as_indices(camvid_tree):
    from PIL import Image

    label = np.tile(np.arange(11, dtype=np.uint8), (24, 3))[:, :32]
    Image.fromarray(np.repeat(label[..., None], 3, axis=-1), mode="RGB").save(_camvid_label(camvid_tree))
    np.testing.assert_array_equal(_val_labels(camvid_tree)[2], label)


def test_colour_label_outside_voc_is_refused(camvid_tree):
    label = np.tile(np.arange(11, dtype=np.uint8), (24, 3))[:, :32]
    write_label(_camvid_label(camvid_tree), label, palette=VOC_COLORMAP.astype(np.uint8).ravel().tolist())
    with pytest.raises(DataError, match=r"Colour label.*v002.png.*single-channel"):
        _val_labels(camvid_tree)


def test_voc_label_with_colours_outside_its_palette_is_refused(voc_tree):
    palette = VOC_COLORMAP.astype(np.uint8).copy()
    palette[15] = (1, 2, 3)  # not a VOC colour
    write_label(os.path.join(voc_tree, "SegmentationClassAug", "2007_000000.png"), np.full((24, 32), 15, np.uint8),
                palette=palette.ravel().tolist())
    ds = build_dataset("voc", voc_tree, "1464")
    with pytest.raises(DataError, match=r"outside the VOC palette.*2007_000000.png"):
        with explain_data_errors(ds.paths("labeled")):
            first(ds.examples("labeled"))


def test_jpeg_label_is_refused(camvid_tree):
    from PIL import Image

    path = _camvid_label(camvid_tree)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(path, format="JPEG")
    with pytest.raises(DataError, match=r"Label is not a PNG.*v002.png"):
        _val_labels(camvid_tree)


def test_verified_files_are_not_decoded_again_until_one_changes(camvid_tree, tmp_path, monkeypatch):
    """A resumed run skips the full decode when its files are unchanged; a changed file is checked
    (and named) again."""
    ds = build_dataset("camvid", camvid_tree, "1_4")
    record = str(tmp_path / "data_verified.json")
    decoded = []
    examples = type(ds).examples
    monkeypatch.setattr(type(ds), "examples", lambda self, subset, **kw: decoded.append(subset) or
                        examples(self, subset, **kw))
    ds.verify(["labeled", "val"], record=record)
    assert decoded == ["labeled", "val"] and os.path.exists(record)
    ds.verify(["labeled", "val"], record=record)
    assert decoded == ["labeled", "val"]  # nothing decoded the second time
    with open(os.path.join(camvid_tree, "val", "v000.png"), "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(DataError, match="v000.png"):
        ds.verify(["labeled", "val"], record=record)

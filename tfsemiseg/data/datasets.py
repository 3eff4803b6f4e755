"""Dataset readers: which files (or synthetic indices) make the labeled, unlabeled and eval sets.

A `SegDataset` knows its classes and, for a chosen split, the keys of its labeled and
unlabeled examples; `examples(subset)` turns keys into decoded, un-augmented examples
({"image": uint8 [H, W, 3], "label": uint8 [H, W]}) in a tf.data pipeline. Augmentation
and batching live in `pipeline.py`.

Splits (`--split`):
- a fraction `a_b` (e.g. `1_8`): a reproducible draw (seed) of that share of the training pool;
- `full`: the whole pool labeled, nothing unlabeled;
- an integer N: a reproducible draw of N images;
- a dataset-specific name (VOC `1464`, a CamVid `splits/<name>/` folder);
- a directory holding `labeled.txt` and `unlabeled.txt`. Lines are either bare ids / file
  names or `JPEGImages/x.jpg SegmentationClass/x.png` pairs as in the ST++ / UniMatch split
  files; the id is taken from the first path.
"""

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from tfsemiseg import files
from tfsemiseg.data import io, synthetic

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                  "car", "pedestrian", "bicyclist")
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                      "bus", "train", "motorcycle", "bicycle")

# Where datasets are looked for when --data_dir is not given.
DATA_ROOT_ENV = "TFSEMISEG_DATA"
DEFAULT_DIRS = {"voc": "VOCdevkit/VOC2012", "cityscapes": "cityscapes", "camvid": "camvid"}


def default_data_dir(name):
    """`$TFSEMISEG_<NAME>_DIR`, else `$TFSEMISEG_DATA/<default>`, else `./data/<default>`."""
    explicit = os.environ.get(f"TFSEMISEG_{name.upper()}_DIR")
    if explicit:
        return explicit
    return os.path.join(os.environ.get(DATA_ROOT_ENV, "data"), DEFAULT_DIRS.get(name, name))


@dataclasses.dataclass
class SegDataset:
    """A dataset with a chosen split. Keys are (image_path, label_path) pairs or synthetic indices."""

    name: str
    class_names: tuple
    labeled: list
    unlabeled: list
    ignore_value: int = io.IGNORE_LABEL
    eval_sets: dict = dataclasses.field(default_factory=dict)  # name -> keys (or a callable giving them)
    find_eval_set: object = None  # optional callable: name -> keys or None, for splits found on disk
    seed: int = 0
    image_size: int = 64  # synthetic only

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def background(self):
        """Index of the background class (VOC, synthetic: 0), or None where every class is a thing or
        stuff category (CamVid, Cityscapes). Image-level methods (PseudoSeg's CAMs) treat it apart."""
        return 0 if self.class_names and self.class_names[0] == "background" else None

    @property
    def synthetic(self):
        return self.name == "synthetic"

    def keys(self, subset):
        if subset == "labeled":
            return self.labeled
        if subset == "unlabeled":
            return self.unlabeled
        keys = self.eval_sets.get(subset)
        if keys is None and self.find_eval_set is not None:
            keys = self.find_eval_set(subset)
        if keys is None:
            raise io.DataError(f"Dataset {self.name!r} has no split {subset!r}"
                               f"{f'; available: {sorted(self.eval_sets)}' if self.eval_sets else ''}. "
                               "Fix --eval_split.")
        return keys() if callable(keys) else keys

    def examples(self, subset, shuffle_seed=None, repeat=False, with_label=True, extras=None):
        """Decoded examples of `subset` as an unbatched tf.data.Dataset.

        Shuffling happens on the (cheap) keys before decoding; the stream is infinite
        when `repeat`. Unlabeled subsets never read their labels. `extras` ({name: array whose
        first axis follows `keys(subset)`}) adds per-example values to each example.
        """
        keys = self.keys(subset)
        if not keys:
            raise io.DataError(f"The {subset} set of {self.name!r} is empty for this split. "
                               "Check the split files or choose another --split.")
        if isinstance(keys[0], tuple):  # (image_path, label_path), or (index, label_path) when relabeled
            key_tensors = tuple(np.asarray(k) for k in zip(*keys))
        else:
            key_tensors = (np.asarray(keys, np.int64),)
        ds = tf.data.Dataset.from_tensor_slices((key_tensors, dict(extras or {})))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(keys), seed=shuffle_seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        decode = self._decoder(with_label)
        return ds.map(lambda key, extra: {**decode(*key), **extra}, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=shuffle_seed is None)

    def image_id(self, key):
        """The id a user names an image by: its file name without extension (the index, synthetic)."""
        if not isinstance(key, tuple):
            return str(int(key))
        return os.path.splitext(os.path.basename(str(key[0])))[0]

    def read_image_labels(self, path, subset="unlabeled"):
        """Image-level labels of `subset` from a text file: multi-hot uint8 [N, C] in `keys(subset)` order.

        One line per image: its id (file name, with or without extension; the index for the
        synthetic set) then the classes present, by name (spaces written as `_`) or index; an image
        with none has its id alone. Lines of other images (e.g. the labeled ones) are allowed;
        `#` starts a comment. Raises DataError naming the file, line and how to fix it.
        """
        if not os.path.isfile(path):
            raise io.DataError(f"Image-level labels file {path} does not exist. Pass an existing file "
                               "to --set image_labels (or 'masks' to derive them from the unlabeled masks).")
        by_name = {name.lower().replace(" ", "_"): i for i, name in enumerate(self.class_names)}  # traffic_light
        given = {}
        with open(path) as f:
            for number, line in enumerate(f, 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                image = os.path.splitext(os.path.basename(fields[0]))[0]
                if image in given:
                    raise io.DataError(f"{path}, line {number}: image {fields[0]!r} is listed twice.")
                row = np.zeros(self.num_classes, np.uint8)
                for token in fields[1:]:
                    index = int(token) if token.isdigit() else by_name.get(token.lower())
                    if index is None or not 0 <= index < self.num_classes:
                        raise io.DataError(
                            f"{path}, line {number}: unknown class {token!r}. Classes of {self.name!r} are "
                            f"0-{self.num_classes - 1} or their names: {', '.join(self.class_names)}.")
                    row[index] = 1
                given[image] = row
        ids = [self.image_id(k) for k in self.keys(subset)]
        missing = [i for i in ids if i not in given]
        if missing:
            raise io.DataError(f"{path} has no line for {len(missing)} of the {len(ids)} {subset} images, first: "
                               f"{missing[0]!r}. Add a line for each (its id alone if it shows no class).")
        return np.stack([given[i] for i in ids])

    def _decoder(self, with_label):
        num_classes, ignore_value = self.num_classes, self.ignore_value
        voc_palette = self.name == "voc"  # VOC's SegmentationClass PNGs are in its palette
        if self.synthetic:
            seed, size = self.seed, self.image_size

            def decode(index, label_path=None):
                example = synthetic.render(index, seed, size)
                if not with_label:
                    return {"image": example["image"]}
                if label_path is not None:
                    return {"image": example["image"], "label": io.read_label(label_path, num_classes)}
                return example
            return decode

        def decode(image_path, label_path):
            if with_label:
                return io.read_pair(image_path, label_path, num_classes, ignore_value, voc_palette)
            return {"image": io.read_image(image_path)}
        return decode

    def verify(self, subsets, record=None):
        """Decode every file of `subsets` once, with all the checks of training (a tf.data pass, no
        model), so a bad file fails before training rather than hours into it. Raises DataError.

        With `record` (a file in the run directory), a check that passed is written down as the
        files' names, sizes and modification times; a resumed run whose files are unchanged does
        not decode them again (VOC's 12,000 images take minutes)."""
        if self.synthetic:
            return
        fingerprint = self._fingerprint(subsets)
        if record and os.path.exists(record):
            with open(record) as f:
                if f.read() == fingerprint:
                    return
        for subset in subsets:
            ds = self.examples(subset, with_label=subset != "unlabeled")
            with io.explain_data_errors(self.paths(subset)):
                ds.map(lambda ex: tf.shape(ex["image"])[0]).reduce(0, lambda total, h: total + h)
        if record:
            files.atomic_write(record, fingerprint)

    def _fingerprint(self, subsets):
        digest = hashlib.sha256()
        for subset in subsets:
            digest.update(f"{subset}\n".encode())
            for path in self.paths(subset):
                stat = os.stat(path)
                digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return json.dumps({"subsets": list(subsets), "files_sha256": digest.hexdigest()})

    def relabeled(self, keys, label_files):
        """A dataset whose labeled set is the images of `keys` with the labels in `label_files`
        (single-channel PNG class maps, 255 = ignore): how pseudo-labeled images are trained on."""
        images = [k[0] for k in keys] if not self.synthetic else [int(k) for k in keys]
        return dataclasses.replace(self, labeled=list(zip(images, label_files)), unlabeled=[],
                                   ignore_value=io.IGNORE_LABEL)

    def paths(self, subset):
        """All files of a subset, for error reports."""
        return [p for key in self.keys(subset) if isinstance(key, tuple) for p in key if isinstance(p, str)]


# ----------------------------------------------------------------------------- splits

def _read_list(path):
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _id_of(entry, strip_prefixes=(), strip_suffixes=()):
    for p in strip_prefixes:
        if entry.startswith(p):
            entry = entry[len(p):]
    for s in strip_suffixes:
        if entry.endswith(s):
            return entry[: -len(s)]
    return entry


def draw(pool, count, seed):
    """A reproducible random subset of `pool` of size `count` (sorted for stable order)."""
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(pool))[:count]
    return sorted(pool[i] for i in picked)


def resolve_split(split, pool, seed, named=None, split_dirs=(), to_id=lambda e: e):
    """(labeled ids, unlabeled ids) for `split` over the training `pool` of ids."""
    split = str(split)
    pool = sorted(pool)
    named = named or {}
    for d in [split, *[os.path.join(sd, split) for sd in split_dirs]]:
        if os.path.isfile(os.path.join(d, "labeled.txt")):
            labeled = [to_id(e) for e in _read_list(os.path.join(d, "labeled.txt"))]
            unlabeled_file = os.path.join(d, "unlabeled.txt")
            if os.path.isfile(unlabeled_file):
                unlabeled = [to_id(e) for e in _read_list(unlabeled_file)]
            else:
                unlabeled = sorted(set(pool) - set(labeled))
            return labeled, unlabeled
    if split in named:
        labeled = named[split]
    elif split == "full":
        labeled = pool
    elif "_" in split and all(p.isdigit() for p in split.split("_", 1)):
        num, den = (int(p) for p in split.split("_", 1))
        if not 0 < num <= den:
            raise io.DataError(f"--split={split}: a fraction a_b needs 0 < a <= b, e.g. 1_8.")
        labeled = draw(pool, max(1, round(len(pool) * num / den)), seed)
    elif split.isdigit():
        if int(split) > len(pool):
            raise io.DataError(f"--split={split} asks for more labeled images than the {len(pool)} available.")
        labeled = draw(pool, int(split), seed)
    else:
        raise io.DataError(
            f"Unknown --split={split!r}: use a fraction like 1_8, 'full', a number of images, "
            f"{', '.join(repr(n) for n in named) + ', ' if named else ''}"
            "or a directory with labeled.txt / unlabeled.txt.")
    labeled_set = set(labeled)
    return list(labeled), [i for i in pool if i not in labeled_set]


def _require_dir(path, name, how):
    if not os.path.isdir(path):
        raise io.DataError(f"{name} not found at {os.path.abspath(path)}. {how}")


# ----------------------------------------------------------------------------- readers

def voc(data_dir, split="1464", seed=0):
    """PASCAL VOC 2012 with SBD augmented labels (`SegmentationClassAug`), 21 classes.

    `1464` = VOC's own train.txt labeled, the rest of train_aug (10582) unlabeled.
    train_aug is `ImageSets/Segmentation/train_aug.txt` if present, else every id with a
    label in the label folder that is not in val.
    """
    data_dir = data_dir or default_data_dir("voc")
    _require_dir(data_dir, "PASCAL VOC 2012",
                 "Put VOCdevkit/VOC2012 (with JPEGImages, ImageSets/Segmentation and SegmentationClassAug) "
                 f"at ./data/VOCdevkit/VOC2012, set ${DATA_ROOT_ENV} or TFSEMISEG_VOC_DIR, or pass --data_dir.")
    label_dir = "SegmentationClassAug"
    if not os.path.isdir(os.path.join(data_dir, label_dir)):
        label_dir = "SegmentationClass"
    sets = os.path.join(data_dir, "ImageSets", "Segmentation")
    for f in ("train.txt", "val.txt"):
        if not os.path.isfile(os.path.join(sets, f)):
            raise io.DataError(f"Missing {os.path.join(sets, f)}: the VOC 2012 split lists are needed.")
    val = _read_list(os.path.join(sets, "val.txt"))
    train = _read_list(os.path.join(sets, "train.txt"))
    if os.path.isfile(os.path.join(sets, "train_aug.txt")):
        pool = _read_list(os.path.join(sets, "train_aug.txt"))
    else:
        val_set = set(val)
        pool = [os.path.splitext(f)[0] for f in os.listdir(os.path.join(data_dir, label_dir))
                if f.endswith(".png") and os.path.splitext(f)[0] not in val_set]
    to_id = lambda e: os.path.splitext(os.path.basename(e))[0]  # noqa: E731
    labeled, unlabeled = resolve_split(split, [to_id(p) for p in pool], seed, named={"1464": train}, to_id=to_id)

    def pairs(ids):
        return [(os.path.join(data_dir, "JPEGImages", i + ".jpg"), os.path.join(data_dir, label_dir, i + ".png"))
                for i in ids]
    return _checked(SegDataset("voc", VOC_CLASSES, pairs(labeled), pairs(unlabeled),
                               eval_sets={"val": pairs(val)}, seed=seed))


def cityscapes(data_dir, split="1_8", seed=0):
    """Cityscapes fine: `leftImg8bit/<split>/<city>/*` and `gtFine_labelTrainIds`, 19 classes."""
    data_dir = data_dir or default_data_dir("cityscapes")
    _require_dir(os.path.join(data_dir, "leftImg8bit"), "Cityscapes",
                 "Put leftImg8bit/ and gtFine/ (with *_gtFine_labelTrainIds.png, made by cityscapesScripts' "
                 "createTrainIdLabelImgs) there, or pass --data_dir.")

    def ids(subset):
        found = glob.glob(os.path.join(data_dir, "leftImg8bit", subset, "*", "*_leftImg8bit.png"))
        return sorted(os.path.relpath(f, os.path.join(data_dir, "leftImg8bit"))[: -len("_leftImg8bit.png")]
                      for f in found)

    to_id = lambda e: _id_of(e, ("leftImg8bit/",), ("_leftImg8bit.png",))  # noqa: E731
    labeled, unlabeled = resolve_split(split, ids("train"), seed, to_id=to_id)

    def pairs(id_list):
        return [(os.path.join(data_dir, "leftImg8bit", i + "_leftImg8bit.png"),
                 os.path.join(data_dir, "gtFine", i + "_gtFine_labelTrainIds.png")) for i in id_list]
    return _checked(SegDataset("cityscapes", CITYSCAPES_CLASSES, pairs(labeled), pairs(unlabeled),
                               eval_sets={s: (lambda s=s: pairs(ids(s))) for s in ("val", "test", "train")},
                               seed=seed))


def folder(data_dir, split="full", seed=0, class_names=CAMVID_CLASSES, ignore_value=11, train_split="train",
           name="folder"):
    """A folder dataset in CamVid's SegNet layout: `<s>/`, `<s>annot/`, `<s>.txt` for any split s.

    `<s>.txt` lists file names (or `s/x.png sannot/x.png` pairs); without it the images in
    `<s>/` are used. Images and labels share file names. `splits/<name>/labeled.txt` and
    `unlabeled.txt` under `data_dir` are found by `--split=<name>`.
    """
    if not data_dir:
        raise io.DataError("--data_dir is required for a folder dataset (the folder holding train/ and trainannot/).")
    _require_dir(os.path.join(data_dir, train_split), f"The {train_split}/ folder of {name}",
                 "Pass --data_dir pointing at the folder that holds train/, trainannot/ and train.txt.")

    def names(subset):
        listing = os.path.join(data_dir, subset + ".txt")
        if os.path.isfile(listing):
            return [os.path.basename(e) for e in _read_list(listing)]
        if not os.path.isdir(os.path.join(data_dir, subset)):
            raise io.DataError(f"No split {subset!r} in {data_dir}: neither {listing} nor {subset}/ exists.")
        return sorted(os.listdir(os.path.join(data_dir, subset)))

    def pairs(subset, files):
        return [(os.path.join(data_dir, subset, f), os.path.join(data_dir, subset + "annot", f)) for f in files]

    labeled, unlabeled = resolve_split(split, names(train_split), seed, split_dirs=[os.path.join(data_dir, "splits")],
                                       to_id=os.path.basename)

    def find_eval_set(subset):  # any split that exists on disk can be evaluated
        if os.path.isfile(os.path.join(data_dir, subset + ".txt")) or os.path.isdir(
                os.path.join(data_dir, subset + "annot")):
            return pairs(subset, names(subset))
        found = sorted(n[:-len("annot")] for n in os.listdir(data_dir)
                       if n.endswith("annot") and os.path.isdir(os.path.join(data_dir, n)))
        raise io.DataError(f"No split {subset!r} in {data_dir}: neither {subset}.txt nor {subset}annot/ exists "
                           f"(splits there: {', '.join(found) or 'none'}). Fix --eval_split.")

    ds = SegDataset(name, tuple(class_names), pairs(train_split, labeled), pairs(train_split, unlabeled),
                    ignore_value=ignore_value, find_eval_set=find_eval_set, seed=seed)
    return _checked(ds)


def synthetic_dataset(split="1_16", seed=0, num_train=512, num_val=128, image_size=64):
    """The built-in dataset: train indices [0, num_train), val indices after them."""
    labeled, unlabeled = resolve_split(split, list(range(num_train)), seed)
    return SegDataset("synthetic", synthetic.CLASS_NAMES, labeled, unlabeled,
                      eval_sets={"val": list(range(num_train, num_train + num_val))}, seed=seed,
                      image_size=image_size)


def _checked(ds):
    if not ds.labeled:
        raise io.DataError(f"The split of {ds.name!r} has no labeled images. Check the split files.")
    io.check_paths_exist([p for pair in ds.labeled for p in pair], "labeled")
    io.check_paths_exist([p for p, _ in ds.unlabeled], "unlabeled image")
    return ds


def build_dataset(name, data_dir=None, split=None, seed=0, **kwargs):
    """The dataset named by `--dataset`: voc, cityscapes, camvid, folder or synthetic."""
    if name == "voc":
        return voc(data_dir, split or "1464", seed)
    if name == "cityscapes":
        return cityscapes(data_dir, split or "1_8", seed)
    if name == "camvid":
        return folder(data_dir or default_data_dir("camvid"), split or "1_8", seed, name="camvid",
                      class_names=kwargs.get("class_names") or CAMVID_CLASSES,
                      ignore_value=kwargs.get("ignore_value", 11))
    if name == "folder":
        if not kwargs.get("class_names"):
            raise io.DataError("--dataset=folder needs class_names (e.g. --set class_names=sky,road,car).")
        return folder(data_dir, split or "full", seed, class_names=kwargs["class_names"],
                      ignore_value=kwargs.get("ignore_value", io.IGNORE_LABEL))
    if name == "synthetic":
        return synthetic_dataset(split or "1_16", seed, image_size=kwargs.get("image_size") or 64)
    raise io.DataError(f"Unknown --dataset={name!r}: use voc, cityscapes, camvid, folder or synthetic.")

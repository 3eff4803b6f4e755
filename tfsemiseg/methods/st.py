"""ST and ST++: self-training with strong augmentation and reliable-image selection (Yang et al.,
"ST++: Make Self-training Work Better for Semi-supervised Semantic Segmentation", CVPR 2022).

Not one `train_step` but a driver of `fit` calls over tf.data datasets. Each stage trains a
fresh SupOnly network (plain cross-entropy) or runs batched inference, and writes its outputs
into `<workdir>/<stage>/`:

ST (`--method=st`):
    1_teacher           T: SupOnly on the labeled images.
    2_pseudo_label      y(u) = argmax_c mean_{s,f} softmax(T(f(s(u)))) for every unlabeled u: test-time
                        augmentation over scales s (0.5-2.0) and flips f; hard labels written as PNGs.
    3_student           a fresh network on labeled images (weak augmentation) and pseudo-labeled ones
                        (weak + strong: colour jitter, grayscale, blur, cutout whose pixels are ignored),
                        shuffled into the same batches, the labeled images repeated to match.
ST++ (`--method=stpp`) self-trains on the reliable images first:
    1_teacher           as in ST, with snapshots T_1, T_2 at 1/3 and 2/3 of its training (T_3 = the end);
    2_select            stability s(u) = 1/2 sum_{k=1,2} mIoU(argmax T_k(u), argmax T_3(u)); the most
                        stable `reliable_fraction` (half) of the unlabeled images are reliable
                        (reliable.txt / unreliable.txt, scores.txt);
    3_label_reliable    T pseudo-labels the reliable images (TTA);
    4_student_reliable  a student on labeled + reliable images;
    5_label_unreliable  that student pseudo-labels the unreliable images (the reliable labels are kept);
    6_student           a fresh student on labeled + all pseudo-labeled images: the reported model.

`--set teacher=<run>` takes a finished SupOnly run of the same setting and seed as stage 1 (SupOnly
keeps the snapshots), so a benchmark trains each seed's teacher once. Students train as the paper
does relative to the teacher: as many epochs over their labeled + pseudo-labeled list as the
teacher over its labeled list (`student_iterations` overrides it).

Running the same command again skips finished stages: a training stage resumes from its
backup and is finished once its metrics.json exists; an inference stage writes into
`<stage>.tmp/`, renamed when complete. TensorBoard logs are in `<workdir>/logs/<stage>/`, with
the pseudo-labels of a few images next to the images. The last student is also saved as
`<workdir>/final/segmenter.keras` and its metrics as `<workdir>/metrics.json`, so evaluate,
export and predict work as for any run.

    python scripts/train.py --method=stpp --dataset=synthetic

Where this differs from the official code: every stage uses its final model, not the one with
the best val mIoU (val is the test set; the author calls the final epoch comparable, ST-PlusPlus
issues #7 and #30); each stage is initialised from seed `cfg.seed + <stage number>`; images of
different sizes are zero-padded to a common size within an inference batch (the official code
labels one image at a time).
"""

import dataclasses
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg import files, metrics, training
from tfsemiseg.config import Config
from tfsemiseg.callbacks import SegmentationImages
from tfsemiseg.data import augment, pipeline
from tfsemiseg.data.io import IGNORE_LABEL
from tfsemiseg.inference import padded_logits, tta_scores
from tfsemiseg.methods.base import register
from tfsemiseg.methods.suponly import SupOnly


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a self-training plan, as data.

    index, name: its place and name; its outputs go to `<workdir>/<index>_<name>/` (`dirname`).
    kind: "train" (a fresh SupOnly network on the labeled images plus the pseudo-labels of the
        `inputs` stages; the teacher has no inputs), "select" (rank the unlabeled images by the
        stability of the snapshots of the model `inputs[0]` trained), or "label" (the model of
        `inputs[0]` pseudo-labels the unlabeled images, or only the `subset` ("reliable" /
        "unreliable") of the selection `inputs[1]`).
    """

    index: int
    name: str
    kind: str
    inputs: tuple = ()
    subset: str = ""

    @property
    def dirname(self):
        return f"{self.index}_{self.name}"

    @property
    def is_teacher(self):
        return self.kind == "train" and not self.inputs


def stability_scores(earlier, final, num_classes, valid=None):
    """ST++'s stability s(u) [B]: the mean over `earlier` predictions (a list of int [B, H, W], one
    per earlier checkpoint) of their per-image mIoU against `final`, the last checkpoint's prediction.
    Pixels where `valid` is 0 (batch padding) are not counted."""
    reference = tf.cast(final, tf.int32)
    if valid is not None:
        reference = tf.where(valid > 0, reference, IGNORE_LABEL)
    return tf.add_n([metrics.per_image_miou(p, reference, num_classes) for p in earlier]) / len(earlier)


def rank(scores):
    """Indices of `scores` from the highest to the lowest; ties keep their order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def split_reliable(keys, scores, fraction=0.5):
    """(reliable, unreliable): `keys` ranked by decreasing score; the first floor(fraction * N) are reliable."""
    ranked = [keys[i] for i in rank(scores)]
    count = int(len(keys) * fraction)
    return ranked[:count], ranked[count:]


def _key_to_text(key):
    return "\t".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _key_from_text(text):
    parts = text.split("\t")
    return tuple(parts) if len(parts) > 1 else int(parts[0])


def _write_keys(path, keys):
    with open(path, "w") as f:
        f.writelines(_key_to_text(k) + "\n" for k in keys)


def _read_keys(path):
    with open(path) as f:
        return [_key_from_text(line.rstrip("\n")) for line in f if line.strip()]


def read_pseudo_labels(stage_dir):
    """[(image key, pseudo-label PNG path)] of a finished labelling stage, in its order."""
    with open(os.path.join(stage_dir, "labels.txt")) as f:
        pngs = [os.path.join(stage_dir, line.strip()) for line in f if line.strip()]
    return list(zip(_read_keys(os.path.join(stage_dir, "keys.txt")), pngs))


def _label_names(keys):
    """Unique PNG names for the pseudo-labels of `keys`: the image's own name, or the synthetic index."""
    if not isinstance(keys[0], tuple):
        return [f"{int(k):06d}.png" for k in keys]
    stems = [os.path.splitext(os.path.basename(k[0]))[0] for k in keys]
    if len(set(stems)) < len(stems):
        stems = [f"{i:06d}_{stem}" for i, stem in enumerate(stems)]
    return [stem + ".png" for stem in stems]


@register("st")
class SelfTraining:
    """The ST driver (see the module docstring). `run` is what `runner.train` calls."""

    description = "ST: a SupOnly teacher pseudo-labels every unlabeled image once, a student retrains (Yang et al., CVPR 2022)"
    # The method's own settings (`Config.params`).
    hyperparameters = dict(
        # > 0: every training stage runs this many epochs over its own image list (paper: 80); else
        # the teacher trains `iterations` and each student `student_iterations` (0: the paper's ratio,
        # as many epochs over its labeled + pseudo-labeled list as the teacher over its labeled list).
        stage_epochs=0,
        student_iterations=0,
        teacher="",  # a finished SupOnly run of the same setting and seed as stage 1 (not trained)
        tta_scales=(0.5, 0.75, 1.0, 1.5, 2.0),  # pseudo-labelling test-time augmentation
        tta_flip=True,
    )

    def __init__(self, cfg, dataset, strategy, verbose=1):
        self.cfg, self.dataset, self.strategy, self.verbose = cfg, dataset, strategy, verbose
        self.workdir = cfg.workdir
        if not dataset.unlabeled:
            raise ValueError(f"--method={cfg.method} needs unlabeled images, but split {cfg.split!r} labels "
                             "the whole training set. Choose a semi-supervised --split (e.g. 1_8).")

    @classmethod
    def run(cls, cfg, dataset, strategy, verbose=1):
        driver = cls(cfg, dataset, strategy, verbose)
        return driver.finish(driver.stages())

    @staticmethod
    def input_files(cfg):
        """As `SegmentationMethod.input_files`: none besides the dataset."""
        return ()

    PLAN = (
        Stage(1, "teacher", "train"),
        Stage(2, "pseudo_label", "label", ("teacher",)),
        Stage(3, "student", "train", ("pseudo_label",)),
    )

    def stages(self):
        """Run the plan's stages in order (finished ones are skipped); returns the directory of the
        last (reported) student."""
        outputs = {}
        for stage in self.PLAN:
            if stage.kind == "train":
                outputs[stage.name] = self.train(stage, [pair for name in stage.inputs for pair in outputs[name]])
            elif stage.kind == "select":
                outputs[stage.name] = self.select(stage, outputs[stage.inputs[0]])
            elif stage.kind == "label":
                keys = outputs[stage.inputs[1]][stage.subset] if stage.subset else self.dataset.unlabeled
                outputs[stage.name] = self.pseudo_label(stage, outputs[stage.inputs[0]], keys)
            else:
                raise ValueError(f"unknown stage kind {stage.kind!r} in {stage}")
        return outputs[self.PLAN[-1].name]

    # -- training stages ---------------------------------------------------------------------------

    def stage_config(self, stage, num_pseudo):
        """The run's config with this stage's schedule. The paper's: every stage `stage_epochs` over its
        own image list (labeled ids x ceil(U / L) + the U pseudo-labeled ids for a student; fewer than
        200 labeled ids repeated to 200 or more, as in the official code). Else the teacher trains
        `iterations` and a student `student_iterations` or, by default, as many epochs over its list as
        the teacher over its own: iterations x |student list| / |teacher list|, rounded up to whole
        `steps_per_epoch` (so `--iterations` sets every stage's length)."""
        cfg = self.cfg
        teacher_images, student_images = self.list_size(0), self.list_size(num_pseudo)
        if cfg.stage_epochs:
            steps = max(1, student_images // cfg.batch_size)
            return cfg.replace(iterations=cfg.stage_epochs * steps, steps_per_epoch=steps)
        if stage.is_teacher:
            return cfg
        if cfg.student_iterations:
            return cfg.replace(iterations=cfg.student_iterations)
        iterations = math.ceil(cfg.iterations * student_images / teacher_images)
        if iterations > cfg.steps_per_epoch:  # whole logging epochs
            iterations = math.ceil(iterations / cfg.steps_per_epoch) * cfg.steps_per_epoch
        return cfg.replace(iterations=iterations)

    def list_size(self, num_pseudo):
        """The images of one epoch of a stage: the official code's training list."""
        labeled = len(self.dataset.labeled)
        if num_pseudo:
            return labeled * math.ceil(num_pseudo / labeled) + num_pseudo
        return labeled * math.ceil(200 / labeled) if labeled < 200 else labeled

    def snapshot_steps(self, cfg):
        """Teacher steps whose snapshots ST++ compares with the last; none for ST."""
        return ()

    def train(self, stage, pseudo=()):
        """Train a fresh SupOnly network on the labeled images plus `pseudo` ((key, png) pairs)."""
        if stage.is_teacher and self.cfg.teacher:
            return self.reused_teacher(stage)
        stage_dir = os.path.join(self.workdir, stage.dirname)
        if os.path.exists(os.path.join(stage_dir, "metrics.json")):
            self.say(f"{stage.dirname}: finished, skipped")
            return stage_dir
        cfg = self.stage_config(stage, len(pseudo))
        self.say(f"{stage.dirname}: training on {len(self.dataset.labeled)} labeled + {len(pseudo)} pseudo-labeled images, "
                 f"{cfg.iterations} iterations")
        keras.utils.set_random_seed(cfg.seed + stage.index)  # a fresh, reproducible init
        with self.strategy.scope():
            model = SupOnly.create(cfg, self.dataset)
        log_dir = os.path.join(self.workdir, "logs", stage.dirname)
        callbacks = SupOnly.extra_callbacks(model, self.dataset, cfg.replace(workdir=stage_dir), log_dir)
        data_paths = self.dataset.paths("labeled")
        if pseudo:
            relabeled = self.dataset.relabeled(*map(list, zip(*pseudo)))
            data_paths += relabeled.paths("labeled")
            train_data = self.mixed_data(cfg, relabeled)
        else:
            train_data = SupOnly.train_data(self.dataset, cfg)
        training.fit_stage(model, train_data, cfg, self.dataset, stage_dir, log_dir, callbacks,
                           verbose=self.verbose, data_paths=data_paths)
        return stage_dir

    # Where a run lives or what only ST uses: a teacher may differ in these and still be this run's.
    # (layout: only the teacher's final model and snapshots are read, which load in any layout.)
    TEACHER_IGNORED = ("method", "workdir", "data_dir", "eval_every", "layout")

    def reused_teacher(self, stage):
        """`cfg.teacher`, checked: a finished SupOnly run of this run's setting (every shared field but
        its location), with the snapshots ST++ needs."""
        teacher, cfg = self.cfg.teacher, self.cfg
        config_path = os.path.join(teacher, "config.json")
        for path in (config_path, os.path.join(teacher, "metrics.json"),
                     os.path.join(teacher, "final", "segmenter.keras")):
            if not os.path.isfile(path):
                raise ValueError(f"--set teacher={teacher}: {path} not found; the teacher must be a finished "
                                 "`--method=suponly` run of the same setting and seed.")
        theirs = Config.from_json(open(config_path).read())
        mine, shared = cfg.shared(), theirs.shared()
        changed = {name: (shared[name], mine[name]) for name in mine
                   if name not in self.TEACHER_IGNORED and shared[name] != mine[name]}
        if theirs.method != "suponly" or changed:
            raise ValueError(f"--set teacher={teacher}: not a SupOnly run of this setting (method "
                             f"{theirs.method!r}; differs in {changed or 'nothing else'}). Train the teacher with "
                             "--method=suponly and this run's other flags, or leave --set teacher unset.")
        for step in self.snapshot_steps(cfg):
            path = training.SaveSegmenterAt.path(os.path.join(teacher, "snapshots"), step)
            if not os.path.isfile(path):
                raise ValueError(f"--set teacher={teacher}: its snapshot {path} is missing (ST++ compares the "
                                 "teacher at 1/3 and 2/3 of training). Train the teacher again, or leave "
                                 "--set teacher unset.")
        self.say(f"{stage.dirname}: the SupOnly run {teacher}")
        return teacher

    def mixed_data(self, cfg, relabeled):
        """Batches mixing labeled crops (weak augmentation) and pseudo-labeled ones (weak + strong),
        at the rates of the official list: labeled ids x ceil(U / L) + the U pseudo-labeled ids."""
        num_labeled, num_pseudo = len(self.dataset.labeled), len(relabeled.labeled)
        labeled = pipeline.labeled_examples(self.dataset, cfg, seed=cfg.seed)
        pseudo = pipeline.labeled_examples(relabeled, cfg, seed=cfg.seed + 1, strong=augment.StrongAugment())
        weights = [num_labeled * math.ceil(num_pseudo / num_labeled), num_pseudo]
        return pipeline.mixed_stream([labeled, pseudo], weights, cfg, seed=cfg.seed)

    # -- inference stages --------------------------------------------------------------------------

    def load(self, stage_dir):
        return keras.saving.load_model(os.path.join(stage_dir, "final", "segmenter.keras"))

    def batches(self, keys):
        """Whole images of `keys`, in order, batched (tf.data)."""
        subset = dataclasses.replace(self.dataset, unlabeled=list(keys))
        return pipeline.inference_stream(subset, self.cfg, "unlabeled")

    def pseudo_label(self, stage, model_dir, keys):
        """Hard TTA pseudo-labels of `keys` by the model of `model_dir`, as PNGs in `<workdir>/<stage>/`
        (at each image's size on disk, 255 nowhere). Returns (key, png path) pairs."""
        out = os.path.join(self.workdir, stage.dirname)
        if os.path.exists(out):
            self.say(f"{stage.dirname}: finished, skipped")
        else:
            self.say(f"{stage.dirname}: pseudo-labelling {len(keys)} images with {os.path.basename(model_dir)}")
            segmenter, cfg, start = self.load(model_dir), self.cfg, time.time()

            @tf.function(reduce_retracing=True)
            def label(images):
                scores = tta_scores(lambda x: padded_logits(segmenter, x), images, cfg.tta_scales, cfg.tta_flip)
                return tf.argmax(scores, axis=-1, output_type=tf.int32)

            names = iter(_label_names(keys))
            writer = tf.summary.create_file_writer(os.path.join(self.workdir, "logs", stage.dirname, "images"))
            with files.atomic_dir(out) as tmp:
                with open(os.path.join(tmp, "labels.txt"), "w") as manifest:
                    for i, batch in enumerate(self.batches(keys)):
                        labels = label(batch["image"])
                        if i == 0:  # a few images next to their pseudo-labels, in TensorBoard
                            shown = tf.where(batch["valid"] > 0, labels, IGNORE_LABEL)[:4]
                            SegmentationImages.write(writer, 0, batch["image"][:4], pseudo_label=shown)
                        for labels_i, valid, size in zip(labels, batch["valid"], batch["size"]):
                            name = next(names)
                            _write_png(os.path.join(tmp, name), labels_i, valid, size)
                            manifest.write(name + "\n")
                files.atomic_write(os.path.join(tmp, "summary.json"), json.dumps(
                    {"images": len(keys), "model": model_dir, "seconds": round(time.time() - start, 1)}))
                _write_keys(os.path.join(tmp, "keys.txt"), keys)
        return read_pseudo_labels(out)

    def finish(self, final_dir):
        """Put the last student and its metrics at the top of the run; per-stage results in "stages"."""
        final = os.path.join(self.workdir, "final", "segmenter.keras")
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.copyfile(os.path.join(final_dir, "final", "segmenter.keras"), final + ".tmp")
        os.replace(final + ".tmp", final)
        result = json.load(open(os.path.join(final_dir, "metrics.json")))
        stages = {}
        for stage in self.PLAN:
            if stage.is_teacher and self.cfg.teacher:  # trained by the SupOnly run, counted there
                found = json.load(open(os.path.join(self.cfg.teacher, "metrics.json")))
                stages[stage.dirname] = {"miou": found["miou"], "train_seconds": 0.0, "reused": True}
                continue
            for file, keys in (("metrics.json", ("miou", "train_seconds")), ("summary.json", ("seconds",))):
                path = os.path.join(self.workdir, stage.dirname, file)
                if os.path.isfile(path):
                    found = json.load(open(path))
                    stages[stage.dirname] = {k: found[k] for k in keys}
        seconds = sum(s.get("train_seconds", s.get("seconds", 0)) for s in stages.values())
        result.update(method=self.cfg.method, stages=stages, total_seconds=round(seconds, 1))
        files.atomic_write(os.path.join(self.workdir, "metrics.json"), json.dumps(result, indent=2))
        return result

    def say(self, message):
        if self.verbose:
            print(f"[{self.cfg.method}] {message}", flush=True)


def _write_png(path, labels, valid, size):
    """Write one image's class map: its unpadded part, resized (nearest) to its size on disk."""
    valid = tf.cast(valid, tf.int32)
    h, w = tf.reduce_sum(tf.reduce_max(valid, axis=1)), tf.reduce_sum(tf.reduce_max(valid, axis=0))
    labels = tf.cast(labels[:h, :w, None], tf.uint8)
    if not tf.reduce_all(tf.shape(labels)[:2] == size):
        labels = tf.image.resize(labels, size, method="nearest")
    tf.io.write_file(path, tf.io.encode_png(labels))


@register("stpp")
class SelfTrainingPlus(SelfTraining):
    """The ST++ driver (see the module docstring)."""

    description = ("ST++: ST with the unlabeled images ranked by the stability of the teacher's snapshots, reliable "
               "ones first (Yang et al., CVPR 2022)")
    hyperparameters = dict(SelfTraining.hyperparameters,
                           reliable_fraction=0.5)  # the share of unlabeled images deemed reliable

    def __init__(self, cfg, dataset, strategy, verbose=1):
        super().__init__(cfg, dataset, strategy, verbose)
        if cfg.stage_epochs == 0 and cfg.iterations < 3:
            raise ValueError(f"--iterations={cfg.iterations}: ST++ compares teacher snapshots taken at 1/3 and "
                             "2/3 of its training, so the teacher needs at least 3 iterations.")

    def snapshot_steps(self, cfg):
        return training.snapshot_steps(cfg.iterations)

    PLAN = (
        Stage(1, "teacher", "train"),
        Stage(2, "select", "select", ("teacher",)),
        Stage(3, "label_reliable", "label", ("teacher", "select"), subset="reliable"),
        Stage(4, "student_reliable", "train", ("label_reliable",)),
        Stage(5, "label_unreliable", "label", ("student_reliable", "select"), subset="unreliable"),
        Stage(6, "student", "train", ("label_reliable", "label_unreliable")),
    )

    def select(self, stage, teacher_dir):
        """Score every unlabeled image's stability across the teacher's checkpoints; write the
        ranking (scores.txt) and the reliable.txt / unreliable.txt split. Returns both key lists,
        as {"reliable": keys, "unreliable": keys}."""
        out = os.path.join(self.workdir, stage.dirname)
        if os.path.exists(out):
            self.say(f"{stage.dirname}: finished, skipped")
        else:
            keys, start = self.dataset.unlabeled, time.time()
            self.say(f"{stage.dirname}: scoring the stability of {len(keys)} unlabeled images")
            snapshots = os.path.join(teacher_dir, "snapshots")
            teacher_cfg = self.stage_config(self.PLAN[0], 0)
            earlier = [keras.saving.load_model(training.SaveSegmenterAt.path(snapshots, step))
                       for step in self.snapshot_steps(teacher_cfg)]
            final, num_classes = self.load(teacher_dir), self.dataset.num_classes

            @tf.function(reduce_retracing=True)
            def score(images, valid):
                def predict(segmenter):
                    return tf.argmax(padded_logits(segmenter, images), axis=-1, output_type=tf.int32)
                return stability_scores([predict(m) for m in earlier], predict(final), num_classes, valid)

            scores = np.concatenate([score(b["image"], b["valid"]).numpy() for b in self.batches(keys)])
            reliable, unreliable = split_reliable(keys, scores, self.cfg.reliable_fraction)
            order = rank(scores)
            with files.atomic_dir(out) as tmp:
                with open(os.path.join(tmp, "scores.txt"), "w") as f:
                    f.writelines(f"{scores[i]:.6f}\t{_key_to_text(keys[i])}\n" for i in order)
                _write_keys(os.path.join(tmp, "reliable.txt"), reliable)
                _write_keys(os.path.join(tmp, "unreliable.txt"), unreliable)
                files.atomic_write(os.path.join(tmp, "summary.json"), json.dumps({
                    "images": len(keys), "reliable": len(reliable), "mean_score": float(scores.mean()),
                    "threshold": float(scores[order[len(reliable) - 1]]) if reliable else None,
                    "seconds": round(time.time() - start, 1)}))
            with tf.summary.create_file_writer(os.path.join(self.workdir, "logs", stage.dirname)).as_default():
                tf.summary.histogram("stability", scores, step=0)
        return {part: _read_keys(os.path.join(out, f"{part}.txt")) for part in ("reliable", "unreliable")}

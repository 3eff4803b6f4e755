"""Training and evaluation runs: what `scripts/train.py` and `scripts/evaluate.py` call.

A run directory (`workdir`) holds:

    config.json              the full configuration of the run
    training_data.json       what it trains on (a resume on another split or labels file is refused)
    data_verified.json       the data files' check that passed (not repeated while they are unchanged)
    run.lock                 held (flock) while a process trains here; a second one is refused
    backup/                  BackupAndRestore state with checksums: rerunning resumes (removed once
                             metrics.json exists)
    checkpoints/             weights after every epoch (`ckpt.weights.h5`)
    snapshots/               SupOnly: the segmenter at 1/3 and 2/3 of training (ST++'s teacher snapshots)
    logs/                    TensorBoard
    final/segmenter.keras    the trained segmenter (raw RGB in, logits out)
    metrics.json             miou, per_class_iou, method, dataset, split, steps, train_images_per_sec
    metrics_<split>.json     written by `evaluate` for the split it evaluated

Files are written atomically (to a temporary name, then renamed), so an interruption never
leaves a half-written checkpoint or metrics file (see `tfsemiseg/training.py`). Multi-stage
methods (ST / ST++) keep one such layout per stage in `<workdir>/<stage>/`, TensorBoard logs in
`logs/<stage>/`, and the last stage's segmenter and metrics at the top.
"""

import hashlib
import json
import os
import re
import shutil
import zipfile

import keras
import tensorflow as tf

from tfsemiseg.config import Config
from tfsemiseg.data import build_dataset
from tfsemiseg.methods import SegmentationMethod, get_method
from tfsemiseg.files import atomic_write
from tfsemiseg.training import (evaluate_model, make_strategy, run_lock, set_precision,
                                worker_workdir)


def load_dataset(cfg):
    return build_dataset(cfg.dataset, cfg.data_dir or None, cfg.split or None, cfg.seed,
                         class_names=cfg.class_names, ignore_value=cfg.ignore_value, image_size=cfg.image_size)


# Where the run lives, not what it computes: a moved run directory or dataset still resumes.
LOCATION_FIELDS = ("workdir", "data_dir", "teacher")


class RunFinished(ValueError):
    """The workdir holds a finished run; retraining needs --overwrite."""


# What a start writes before training: records, not training state.
RECORDS = ("config.json", "logs", "data_verified.json", "training_data.json", "run.lock")


def _has_state(workdir):
    """True once training has left something to resume (a backup, checkpoints, stages)."""
    return any(name not in RECORDS for name in os.listdir(workdir))


def _check_resume(cfg):
    """A workdir with training state belongs to one configuration: refuse to resume it with another.

    Only settings that change the result are compared; a config.json left by a start that failed
    before training (no state yet) is simply replaced.
    """
    path = os.path.join(cfg.workdir, "config.json")
    if os.path.exists(path) and _has_state(cfg.workdir):
        previous = Config.from_json(open(path).read())
        if previous.layout != cfg.layout:
            raise ValueError(f"{cfg.workdir} holds a run saved by an earlier tfsemiseg (layout {previous.layout}; "
                             f"this one writes layout {cfg.layout}: segmenters are now a backbone plus a head), "
                             "which cannot be resumed. Its final model, if any, still evaluates and exports; to "
                             "train it, pass --overwrite to start over, or finish it with the release that began it.")
        now = cfg.settings()
        diff = {k: (v, now.get(k)) for k, v in previous.settings().items()
                if k not in LOCATION_FIELDS and now.get(k) != v}
        if diff:
            raise ValueError(f"{cfg.workdir} holds a run with another configuration (changed: {diff}). "
                             "Use a new --workdir, or pass --overwrite to start over.")


def _training_data(cfg, dataset, input_files):
    """What a run trains on: the labeled and unlabeled files (relative to the data directory, which
    may move; synthetic keys are indices) and the contents of the method's own input files."""
    def name(part):
        return os.path.relpath(part, cfg.data_dir) if isinstance(part, str) and cfg.data_dir else str(part)

    record = {}
    for subset in ("labeled", "unlabeled"):
        keys = [key if isinstance(key, tuple) else (key,) for key in dataset.keys(subset)]
        text = "\n".join("\t".join(map(name, key)) for key in keys)
        record[subset] = {"images": len(keys), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    record["files"] = {path: hashlib.sha256(open(path, "rb").read()).hexdigest() for path in input_files
                       if os.path.isfile(path)}  # a missing one: the method names it before training
    return record


def _check_training_data(cfg, dataset, input_files):
    """A resumed run trains on what it started with: refuse it when the split now names other
    images or a method's input file (PseudoSeg's image-level labels) has changed, rather than
    silently finishing the run on other data. Written at the first start (`training_data.json`)."""
    record = _training_data(cfg, dataset, input_files)
    path = os.path.join(cfg.workdir, "training_data.json")
    if os.path.exists(path) and _has_state(cfg.workdir):
        previous = json.load(open(path))
        changes = [f"the {subset} set has {record[subset]['images']} images, the run started with "
                   f"{previous[subset]['images']}" if record[subset]["images"] != previous[subset]["images"]
                   else f"the {subset} set names other images than the run started with"
                   for subset in ("labeled", "unlabeled") if record[subset] != previous.get(subset)]
        changes += [f"{file} has changed since the run started" for file, sha in record["files"].items()
                    if previous.get("files", {}).get(file, sha) != sha]
        if changes:
            raise ValueError(f"{cfg.workdir} holds a run started on other training data ({'; '.join(changes)}); "
                             "resuming would finish it on different data. Restore the split / file, use a new "
                             "--workdir, or pass --overwrite to start over.")
    atomic_write(path, json.dumps(record, indent=2))


# What a run writes at the top of its workdir (stage directories `<n>_<name>` of ST / ST++ too):
# --overwrite deletes these and nothing else.
RUN_NAMES = ("config.json", "training_data.json", "data_verified.json", "backup", "checkpoints", "logs", "final",
             "snapshots", "metrics.json", "workers", "run.lock")
_RUN_PATTERN = re.compile(r"^(\d+_[a-z_]+(\.tmp)?|metrics_[\w.-]+\.json|.*\.tmp)$")


def _written_by_run(name):
    return name in RUN_NAMES or bool(_RUN_PATTERN.match(name))


def _check_workdir(workdir):
    """A workdir is new, empty or a run's: refuse a folder of other files (a run there would mix
    its files with them, and --overwrite would have deleted them)."""
    if not os.path.isdir(workdir) or os.path.exists(os.path.join(workdir, "config.json")):
        return
    foreign = sorted(name for name in os.listdir(workdir) if not _written_by_run(name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"--workdir={workdir} holds files that no run wrote ({shown}). A run needs a new or "
                         f"empty folder, or its own: pass e.g. --workdir={os.path.join(workdir, 'run')}.")


def _remove_run(workdir):
    """--overwrite: delete what a run wrote in its directory (`RUN_NAMES`, stage directories),
    leaving any other file, and the other workers' `workers/` (each multi-worker process deletes
    its own, and may already be writing it)."""
    if not os.path.isdir(workdir):
        return
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if name not in ("workers", "run.lock") and _written_by_run(name):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def train(cfg, verbose=1, overwrite=False):
    """Train `cfg.method` as configured; returns the metrics written to metrics.json.

    Every method's `run` classmethod trains it: a `SegmentationMethod`'s is one `fit`, a driver's
    (ST / ST++) runs its stages under the same workdir.
    A finished run is not trained again unless `overwrite`, which first deletes what the run wrote
    in the workdir (nothing else; not `workers/`, the other multi-worker processes' own
    directories). A folder of other files, without a run, is refused. A resumed run
    does not decode its data files again when they are unchanged (`data_verified.json`).
    """
    cfg.validate()
    # First: under MultiWorkerMirroredStrategy it connects the workers before any other TF work,
    # and it tells where this process writes (the chief: the workdir; the others: their own).
    strategy = make_strategy(cfg.distribute)
    cfg = cfg.replace(workdir=worker_workdir(cfg.workdir, strategy))
    _check_workdir(cfg.workdir)
    with run_lock(cfg.workdir):  # one process a run: a second one is refused before it writes
        return _train(cfg, strategy, verbose, overwrite)


def _train(cfg, strategy, verbose, overwrite):
    if overwrite:
        _remove_run(cfg.workdir)
    if os.path.isdir(cfg.workdir):
        _check_resume(cfg)
    metrics_path = os.path.join(cfg.workdir, "metrics.json")
    if os.path.exists(metrics_path):
        model_path = os.path.join(cfg.workdir, "final", "segmenter.keras")
        if _model_damaged(model_path):
            raise ValueError(f"{cfg.workdir} holds a finished run whose model {model_path} is missing or damaged. "
                             "Restore it, or pass --overwrite to train the run again.")
        try:
            miou = json.load(open(metrics_path)).get("miou")
        except ValueError:
            raise ValueError(f"{metrics_path} cannot be read: it is damaged. Evaluate the run again with "
                             f"python scripts/evaluate.py --workdir={cfg.workdir}, or pass --overwrite.") from None
        raise RunFinished(f"{cfg.workdir} holds a finished run (val mIoU {100 * miou:.2f}). Evaluate it with "
                          f"python scripts/evaluate.py --workdir={cfg.workdir}, or pass --overwrite to train it "
                          "again from scratch.")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    set_precision(cfg.mixed_precision)
    os.makedirs(cfg.workdir, exist_ok=True)
    dataset = load_dataset(cfg)
    method = get_method(cfg.method)
    _check_training_data(cfg, dataset, method.input_files(cfg))  # before the (long) file check
    dataset.verify(["labeled", "unlabeled", cfg.eval_split] if dataset.unlabeled else ["labeled", cfg.eval_split],
                   record=os.path.join(cfg.workdir, "data_verified.json"))
    atomic_write(os.path.join(cfg.workdir, "config.json"), cfg.to_json())

    return method.run(cfg, dataset, strategy, verbose)  # one fit, or a driver's stages (ST, ST++)


def load_run(workdir, data_dir=None):
    """(cfg, segmenter) of a finished run."""
    config_path = os.path.join(workdir, "config.json")
    model_path = os.path.join(workdir, "final", "segmenter.keras")
    for path in (config_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: --workdir must be the directory of a finished train.py run.")
    try:
        cfg = Config.from_json(open(config_path).read())
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_path} cannot be read ({err}): it is damaged. Restore it, or train the run "
                         "again with --overwrite.") from None
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    try:
        segmenter = keras.saving.load_model(model_path)
    except Exception as err:  # keras raises ValueError, OSError, zipfile and h5py errors for a damaged file
        raise DamagedFile(model_path, err) from None
    return cfg, segmenter


class DamagedFile(ValueError):
    """A file a run wrote cannot be read; the message names it and what to do."""

    def __init__(self, path, err):
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        super().__init__(f"{path} cannot be read ({reason[:200]}): it is damaged. Restore it from a copy, or "
                         "train the run again: python scripts/train.py <the run's flags> --overwrite.")


def _model_damaged(path):
    """Whether a .keras file (a zip archive) is missing, truncated or corrupt, without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (OSError, zipfile.BadZipFile):
        return True


def evaluate(workdir, data_dir=None, eval_split=None):
    """Evaluate the final model of a run on `eval_split`; writes and returns metrics_<split>.json."""
    cfg, segmenter = load_run(workdir, data_dir)
    subset = eval_split or cfg.eval_split
    if not os.access(workdir, os.W_OK):
        raise PermissionError(f"{workdir} is not writable: metrics_{subset}.json could not be saved there. "
                              "Make it writable, or copy the run directory somewhere writable first.")
    dataset = load_dataset(cfg)
    model = SegmentationMethod(segmenter, dataset.num_classes, eval_window=cfg.eval_window)
    model.compile()
    metrics = {"method": cfg.method, "dataset": cfg.dataset, "split": cfg.split}
    train_metrics = os.path.join(workdir, "metrics.json")
    if os.path.exists(train_metrics):
        previous = json.load(open(train_metrics))
        metrics.update(steps=previous.get("steps"), train_images_per_sec=previous.get("train_images_per_sec"))
    metrics.update(evaluate_model(model, dataset, cfg, subset))
    atomic_write(os.path.join(workdir, f"metrics_{subset}.json"), json.dumps(metrics, indent=2))
    return metrics

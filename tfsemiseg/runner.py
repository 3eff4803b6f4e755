"""Training and evaluation runs: what `scripts/train.py` and `scripts/evaluate.py` call.

A run directory (`workdir`) holds:

    config.json              the full configuration of the run
    backup/                  keras.callbacks.BackupAndRestore state: rerunning resumes
    checkpoints/             weights after every epoch (`ckpt.weights.h5`)
    logs/                    TensorBoard
    final/segmenter.keras    the trained segmenter (raw RGB in, logits out)
    metrics.json             miou, per_class_iou, method, dataset, split, steps, train_images_per_sec
    metrics_<split>.json     written by `evaluate` for the split it evaluated

Files are written atomically (to a temporary name, then renamed), so an interruption never
leaves a half-written checkpoint or metrics file.
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg import callbacks as callbacks_lib
from tfsemiseg.config import Config
from tfsemiseg.data import build_dataset, eval_stream, explain_data_errors
from tfsemiseg.methods import SegmentationMethod, get_method


def atomic_write(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def set_precision(mixed_precision):
    """mixed_float16 on GPU, mixed_bfloat16 on CPU (float16 kernels are slow there)."""
    if mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    else:
        policy = "float32"
    keras.mixed_precision.set_global_policy(policy)


def make_strategy(name):
    """`none`: the default strategy; `mirrored`: all local GPUs; `multiworker`: machines in TF_CONFIG."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All local GPUs; on a machine without GPUs, the logical CPU devices (how the tests run it).
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--distribute must be none, mirrored or multiworker, got {name!r}")


def load_dataset(cfg):
    return build_dataset(cfg.dataset, cfg.data_dir or None, cfg.split or None, cfg.seed,
                         class_names=cfg.class_names, ignore_value=cfg.ignore_value, image_size=cfg.image_size)


def _check_resume(cfg):
    """A workdir belongs to one configuration: refuse to resume a run with a different one."""
    path = os.path.join(cfg.workdir, "config.json")
    if os.path.exists(path):
        previous = Config.from_json(open(path).read())
        if previous != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in vars(previous).items() if getattr(cfg, k) != v}
            raise ValueError(f"{cfg.workdir} holds a run with another configuration (changed: {diff}). "
                             "Use a new --workdir, or delete the old one to start over.")


def evaluate_model(model, dataset, cfg, subset):
    """mIoU and per-class IoU of `model` (a SegmentationMethod) on `subset` of `dataset`."""
    with explain_data_errors(dataset.paths(subset)):
        result = model.evaluate(eval_stream(dataset, cfg, subset), return_dict=True, verbose=0)
    per_class = model.miou.per_class_iou()
    return {
        "miou": float(result["miou"]),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(dataset.class_names, per_class)},
        "eval_split": subset,
    }


def train(cfg, verbose=1):
    """Train `cfg.method` as configured; returns the metrics written to metrics.json."""
    keras.utils.set_random_seed(cfg.seed)
    set_precision(cfg.mixed_precision)
    os.makedirs(cfg.workdir, exist_ok=True)
    _check_resume(cfg)
    dataset = load_dataset(cfg)
    atomic_write(os.path.join(cfg.workdir, "config.json"), cfg.to_json())

    method = get_method(cfg.method)
    with make_strategy(cfg.distribute).scope():
        model = method.create(cfg, dataset.num_classes)
    steps_per_epoch = min(cfg.steps_per_epoch, cfg.iterations)
    epochs = math.ceil(cfg.iterations / steps_per_epoch)
    throughput = callbacks_lib.Throughput(cfg.batch_size)
    os.makedirs(os.path.join(cfg.workdir, "checkpoints"), exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(cfg.workdir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(cfg.workdir, "checkpoints", "ckpt.weights.h5"),
                                        save_weights_only=True),
        callbacks_lib.DiscriminatorLearningRate(),  # before TensorBoard, which writes the logs
        keras.callbacks.TensorBoard(os.path.join(cfg.workdir, "logs"), write_graph=False),
        throughput,
        *method.extra_callbacks(model, dataset, cfg),
    ]
    validation = {}
    if cfg.eval_every:
        validation = dict(validation_data=eval_stream(dataset, cfg, cfg.eval_split), validation_freq=cfg.eval_every)
    start = time.time()
    with explain_data_errors(dataset.paths("labeled") + dataset.paths("unlabeled")):
        model.fit(method.train_data(dataset, cfg), epochs=epochs, steps_per_epoch=steps_per_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False, **validation)
    train_seconds = time.time() - start

    final_dir = os.path.join(cfg.workdir, "final")
    os.makedirs(final_dir, exist_ok=True)
    tmp = os.path.join(final_dir, "segmenter.tmp.keras")
    model.segmenter.save(tmp)
    os.replace(tmp, os.path.join(final_dir, "segmenter.keras"))

    metrics = {
        "method": cfg.method, "dataset": cfg.dataset, "split": cfg.split, "steps": epochs * steps_per_epoch,
        "train_images_per_sec": round(throughput.images_per_sec, 2), "train_seconds": round(train_seconds, 1),
        **evaluate_model(model, dataset, cfg, cfg.eval_split),
    }
    atomic_write(os.path.join(cfg.workdir, "metrics.json"), json.dumps(metrics, indent=2))
    return metrics


def load_run(workdir, data_dir=None):
    """(cfg, segmenter) of a finished run."""
    config_path = os.path.join(workdir, "config.json")
    model_path = os.path.join(workdir, "final", "segmenter.keras")
    for path in (config_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: --workdir must be the directory of a finished train.py run.")
    cfg = Config.from_json(open(config_path).read())
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    return cfg, keras.saving.load_model(model_path)


def evaluate(workdir, data_dir=None, eval_split=None):
    """Evaluate the final model of a run on `eval_split`; writes and returns metrics_<split>.json."""
    cfg, segmenter = load_run(workdir, data_dir)
    subset = eval_split or cfg.eval_split
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

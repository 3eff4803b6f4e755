"""One `fit` of one model, resumable, as every run and every ST / ST++ stage does it.

`fit_stage(model, train_data, cfg, dataset, stage_dir)` trains for `cfg.iterations` and leaves in
`stage_dir`:

    backup/                  BackupAndRestore state (this epoch's and the previous one's): rerunning
                             resumes; removed once metrics.json exists
    checkpoints/             weights after every epoch (`ckpt.weights.h5`)
    final/segmenter.keras    the trained segmenter (raw RGB in, logits out)
    metrics.json             written last: its presence means the stage is finished

Files are written atomically (to a temporary name, then renamed), so an interruption never
leaves a half-written checkpoint, metrics file or output directory.
"""

import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg import callbacks as callbacks_lib
from tfsemiseg import files
from tfsemiseg.data import eval_stream, explain_data_errors
# Whether this CPU computes in bfloat16: without it oneDNN refuses bfloat16 and TensorFlow emulates it,
# 15x slower than float32 on an AVX2 EPYC (benchmarks/RESULTS.md, "CPUs without AVX-512").
from tfsemiseg.models.convolution import cpu_bfloat16 as native_bfloat16


class RunInUse(ValueError):
    """Another process trains in this workdir."""


@contextlib.contextmanager
def run_lock(workdir):
    """Hold `<workdir>/run.lock` (an exclusive `flock`, released by the OS however the process ends)
    while a run trains; a second process on the same workdir is refused with the holder's pid."""
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, "run.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunInUse(f"--workdir={workdir} is in use by another train.py (process {holder}). Wait for it to "
                       "finish or stop it, or pass another --workdir.") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def save_segmenter(segmenter, path):
    """Save a segmenter as a .keras file, atomically."""
    with files.atomic_path(path, ".keras") as tmp:
        segmenter.save(tmp)


def epochs_and_steps(cfg):
    """(epochs, steps_per_epoch) of a fit of `cfg.iterations`: Keras epochs are the logging,
    checkpoint and evaluation cadence."""
    steps_per_epoch = min(cfg.steps_per_epoch, cfg.iterations)
    return math.ceil(cfg.iterations / steps_per_epoch), steps_per_epoch


def snapshot_steps(iterations):
    """The steps at which a supervised run keeps ST++'s teacher snapshots: 1/3 and 2/3 of training
    (the official code saves at the end of epochs E // 3 and 2E // 3 of E)."""
    return (iterations // 3, 2 * iterations // 3)


class SaveSegmenterAt(keras.callbacks.Callback):
    """Saves `model.segmenter` after the given (1-based) training steps as `<directory>/step_<n>.keras`
    (ST++'s teacher snapshots). `ModelCheckpoint` saves every epoch or every N batches, not at chosen
    steps. Steps count the compiled optimizer's iterations, so a resumed fit saves at the same ones."""

    def __init__(self, steps, directory):
        super().__init__()
        self.steps, self.directory = set(steps), directory

    @staticmethod
    def path(directory, step):
        return os.path.join(directory, f"step_{step}.keras")

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())  # a resumed fit's, restored by then

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1  # counted on the host: no read of the optimizer's variable each step
        if self.step in self.steps:
            save_segmenter(self.model.segmenter, self.path(self.directory, self.step))


def set_precision(mixed_precision):
    """mixed_float16 on GPU, mixed_bfloat16 on CPU (float16 kernels are slow there). Warns when the
    CPU has no bfloat16 arithmetic, where mixed precision is many times slower than float32."""
    if mixed_precision:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
        if not gpu and native_bfloat16() is False:
            print("warning: --mixed_precision: this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16), "
                  "so TensorFlow emulates bfloat16, many times slower than float32. Drop --mixed_precision "
                  "here.", file=sys.stderr, flush=True)
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


def synchronize_batch_norm(model):
    """Make every BatchNormalization in `model` compute its training statistics over all replicas'
    batches (Keras' `synchronized=True`, an all-reduce of the sums per step). `_flatten_layers`
    (Keras' own walk) also finds the layers a layer holds as attributes, such as PseudoSeg's SGC
    batch norm, which no `.layers` list contains."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def worker_workdir(workdir, strategy):
    """The directory this process writes: the run directory itself, except on the workers of a
    MultiWorkerMirroredStrategy other than the chief, which write the same files to their own
    `<workdir>/workers/<task type>_<task id>/`: no two processes write one file, and each resumes
    from its own backup (identical to the chief's, the weights being mirrored)."""
    if strategy.extended.should_checkpoint:
        return workdir
    resolver = strategy.cluster_resolver
    return os.path.join(workdir, "workers", f"{resolver.task_type}_{resolver.task_id}")


def evaluate_model(model, dataset, cfg, subset):
    """mIoU and per-class IoU of `model` (a SegmentationMethod) on `subset` of `dataset`."""
    with explain_data_errors(dataset.paths(subset)):
        model.evaluate(eval_stream(dataset, cfg, subset), verbose=0)
    # From the confusion matrix summed over all replicas and workers. `evaluate`'s own "miou" is
    # the mean of each replica's mIoU over its share of the images when distributed.
    per_class = model.miou.per_class_iou()
    return {
        "miou": float(np.nanmean(per_class)),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(dataset.class_names, per_class)},
        "eval_split": subset,
    }


def fit_stage(model, train_data, cfg, dataset, stage_dir, log_dir=None, callbacks=(), verbose=1, data_paths=()):
    """Fit `model` (compiled for `cfg.iterations`) on `train_data`, then save and evaluate it.

    TensorBoard logs go to `log_dir` (default `stage_dir/logs`). Returns the metrics it
    writes to `stage_dir/metrics.json`.
    """
    epochs, steps_per_epoch = epochs_and_steps(cfg)
    log_dir = log_dir or os.path.join(stage_dir, "logs")
    backup_dir = os.path.join(stage_dir, "backup")
    if cfg.deterministic:
        # The stream is a fixed sequence: a resumed fit continues it where the interrupted one
        # stopped, so that it ends with exactly the weights of an uninterrupted run.
        train_data = train_data.skip(callbacks_lib.Backup.resumed_epoch(backup_dir) * steps_per_epoch)
    if cfg.sync_bn and model.distribute_strategy.num_replicas_in_sync > 1:
        synchronize_batch_norm(model)
    throughput = callbacks_lib.Throughput(cfg.batch_size)
    os.makedirs(os.path.join(stage_dir, "checkpoints"), exist_ok=True)
    all_callbacks = [
        callbacks_lib.StopOnNonFiniteLoss(stage_dir),  # first: raises before anything saves a NaN state
        # Kept until metrics.json is written: a kill after the last epoch, or a failed final
        # evaluation, resumes at the end instead of training from epoch 1 again.
        callbacks_lib.Backup(backup_dir),
        callbacks_lib.SaveWeights(os.path.join(stage_dir, "checkpoints", "ckpt.weights.h5")),
        *callbacks,  # the method's, before TensorBoard, which writes the logs they add to
        keras.callbacks.TensorBoard(log_dir, write_graph=False),
        throughput,
    ]
    validation = {}
    if cfg.eval_every:
        validation = dict(validation_data=eval_stream(dataset, cfg, cfg.eval_split), validation_freq=cfg.eval_every)
    start = time.time()
    # A full disk under a write that names no file (TensorBoard's events) names the stage's folder.
    with explain_data_errors(list(data_paths)), files.writing(stage_dir):
        model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=all_callbacks,
                  verbose=verbose, shuffle=False, **validation)
    train_seconds = time.time() - start
    save_segmenter(model.segmenter, os.path.join(stage_dir, "final", "segmenter.keras"))
    metrics = {
        "method": cfg.method, "dataset": cfg.dataset, "split": cfg.split, "steps": epochs * steps_per_epoch,
        "train_images_per_sec": throughput.images_per_sec and round(throughput.images_per_sec, 2),
        "train_seconds": round(train_seconds, 1),
        **evaluate_model(model, dataset, cfg, cfg.eval_split),
    }
    files.atomic_write(os.path.join(stage_dir, "metrics.json"), json.dumps(metrics, indent=2))
    shutil.rmtree(backup_dir, ignore_errors=True)  # the run's outputs now exist
    return metrics

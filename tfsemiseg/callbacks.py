"""Callbacks that Keras does not already provide."""

import json
import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfsemiseg import files
from tfsemiseg.data.io import VOC_COLORMAP
from tfsemiseg.data.pipeline import eval_stream


class Throughput(keras.callbacks.Callback):
    """Measures training images per second between batch ends (so tracing and evaluation are excluded)."""

    def __init__(self, images_per_step):
        super().__init__()
        self.images_per_step = images_per_step
        self.seconds = 0.0
        self.steps = 0
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.steps += 1
        self._last = now

    @property
    def images_per_sec(self):
        """None when no step was timed (a resumed fit that had only its final evaluation left)."""
        return self.steps * self.images_per_step / self.seconds if self.seconds else None


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the term and the step."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDiverged` at the first batch whose logged loss terms (`loss*`) are not finite,
    and at the end of an epoch whose weights are not all finite.

    Keras' `TerminateOnNaN` watches only `loss` and lets the epoch end, so the NaN weights would be
    checkpointed and backed up. Raising from the batch stops `fit` before any of that: the
    backup and checkpoint of the last finished epoch stay as they were. The weights are checked
    too, before anything saves them (this callback comes first), because a finite loss does not
    prove finite weights: oneDNN's fused batch norm + ReLU maps NaN activations to 0, so a network
    with a NaN layer can go on training with a finite loss.
    """

    def __init__(self, stage_dir=None):
        super().__init__()
        self.stage_dir = stage_dir

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if name.startswith("loss") and not math.isfinite(float(value)):
                step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                where = f" in {self.stage_dir}" if self.stage_dir else ""
                raise TrainingDiverged(
                    f"{name} is {float(value)} at step {step}{where}: training diverged. The last finished "
                    "epoch's state is kept (backup/, checkpoints/). Lower the learning rate (--set lr=...) and "
                    "start a new --workdir, or rerun to retry from that state.")

    def on_epoch_end(self, epoch, logs=None):
        variables = self.model.trainable_variables
        if bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])):
            return  # one boolean to the host; the names only when something is wrong
        bad = [v.path for v in variables if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        where = f" in {self.stage_dir}" if self.stage_dir else ""
        raise TrainingDiverged(
            f"{len(bad)} weight(s) are NaN or infinite after epoch {epoch + 1}{where} (first: {bad[0]}), "
            "although the logged losses were finite: training diverged. The last finished epoch's state "
            "is kept (backup/, checkpoints/). Lower the learning rate (--set lr=...) and start a new "
            "--workdir, or rerun to retry from that state.")


class BackupError(RuntimeError):
    """The backup of an interrupted run cannot be resumed; the message names the file."""


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, kept until the run's outputs exist, and safe against a damaged backup.

    `double_checkpoint` keeps the previous epoch's backup (`*.bkp`). Every saved weights file's
    SHA-256 goes to `checksums.json` (this epoch's and the previous one's), so a file damaged
    anywhere, even mid-file where h5py still opens it, is found before it is loaded: the run then
    resumes from the previous epoch's backup and says so, or, with none intact, stops naming the
    files. Also refused with the file's name: weights that are missing while the metadata says
    epochs were trained (resuming from random weights).
    """

    CHECKSUMS = "checksums.json"

    def __init__(self, backup_dir):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=False)

    @staticmethod
    def intact(backup_dir):
        """Which weights a resume can use: "latest", "previous" (`*.bkp`, the latest being damaged or
        half-written), "none" when no epoch's backup was ever completed (the first one was
        interrupted: the fit starts from its beginning), or None when epochs were backed up but
        neither file matches a checksum recorded when it was written."""
        weights = os.path.join(backup_dir, "latest.weights.h5")
        try:
            known = json.load(open(os.path.join(backup_dir, Backup.CHECKSUMS)))
        except (OSError, ValueError):
            known = {}
        if os.path.exists(weights) and files.sha256(weights) in known:
            return "latest"
        if os.path.exists(weights + ".bkp") and files.sha256(weights + ".bkp") in known:
            return "previous"
        if not known and not os.path.exists(weights + ".bkp") and Backup._recorded_epoch(backup_dir) <= 1:
            return "none"
        return None

    @staticmethod
    def _recorded_epoch(backup_dir):
        """The epoch Keras' metadata records (0 when missing or half-written)."""
        try:
            return json.load(open(os.path.join(backup_dir, "training_metadata.json")))["epoch"]
        except (OSError, ValueError, KeyError):
            return 0

    @staticmethod
    def resumed_epoch(backup_dir):
        """The number of finished epochs a resumed fit starts after (0 for a new run): the backup's,
        or, when its weights are damaged, the previous epoch's (`*.bkp`), as `on_train_begin` will."""
        metadata = os.path.join(backup_dir, "training_metadata.json")
        verdict = Backup.intact(backup_dir)
        if verdict == "none":
            return 0
        if verdict == "previous":
            metadata += ".bkp"
        return json.load(open(metadata))["epoch"] if os.path.exists(metadata) else 0

    def _write_checksums(self):
        """After the weights are written: the SHA-256 of this epoch's and the previous epoch's files."""
        path = os.path.join(self.backup_dir, self.CHECKSUMS)
        known = {files.sha256(self._weights_path): self._current_epoch}
        if os.path.exists(self._prev_weights_path):
            known[files.sha256(self._prev_weights_path)] = self._current_epoch - 1
        files.atomic_write(path, json.dumps(known))

    def _check_weights(self):
        """Fall back to the previous epoch's backup when the latest weights are damaged (and say so);
        stop, naming the files, when neither is intact."""
        weights, previous = self._weights_path, self._prev_weights_path
        verdict = self.intact(self.backup_dir)
        if verdict == "none":
            if os.path.exists(weights) or os.path.exists(self._training_metadata_path):
                print(f"warning: the first epoch's backup ({weights}) was not completely written (interrupted or "
                      "a full disk); this fit starts from its beginning.", file=sys.stderr, flush=True)
            for path in (weights, self._training_metadata_path, self._prev_training_metadata_path):
                if os.path.exists(path):
                    os.remove(path)
        elif verdict == "previous" and os.path.exists(self._prev_training_metadata_path):
            print(f"warning: {weights} is damaged (its checksum does not match the one recorded when it was "
                  f"written); resuming from the previous epoch's backup, {previous}.", file=sys.stderr, flush=True)
            shutil.copyfile(previous, weights)
            shutil.copyfile(self._prev_training_metadata_path, self._training_metadata_path)
        elif verdict != "latest":
            earlier = (f"the previous epoch's {previous} is damaged too" if os.path.exists(previous)
                       else "there is no earlier backup to fall back to")
            raise BackupError(f"{weights} cannot be read: damaged (its checksum does not match "
                              f"{os.path.join(self.backup_dir, self.CHECKSUMS)}), and {earlier}. "
                              f"Delete {self.backup_dir} to start the run over.")

    def on_train_begin(self, logs=None):
        weights = self._weights_path
        if (os.path.exists(self._training_metadata_path) and not os.path.exists(weights)
                and not os.path.exists(self._prev_weights_path)):
            raise BackupError(f"{weights} is missing, but {self._training_metadata_path} says "
                              f"{self.resumed_epoch(self.backup_dir)} epoch(s) were trained: resuming would start "
                              f"from random weights. Restore the file, or delete {self.backup_dir} to start over.")
        self._check_weights()
        try:
            super().on_train_begin(logs)
        except OSError as err:
            raise BackupError(f"{weights} cannot be read ({err}) and there is no earlier backup to fall back to. "
                              f"Delete {self.backup_dir} to start the run over.") from None
        self._restore_random_states()

    # The states of the model's random generators (its dropout layers' SeedGenerators) are not in
    # the weights file: without them a resumed run would draw its dropout masks from the start of
    # the stream again, and a --deterministic run, killed and resumed, would not end with the
    # uninterrupted run's weights. They are saved beside the weights, one file per epoch.

    def _random_state_variables(self):
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def _random_states_path(self, epoch):
        return os.path.join(self.backup_dir, f"random_states_epoch{epoch}.npz")

    def _save_model(self):
        # The states first: once Keras' metadata says epoch N is backed up, N's states exist (a
        # kill between the two files resumed with fresh dropout streams, silently inexact).
        epoch = self._current_epoch
        path = self._random_states_path(epoch)
        with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, *[keras.ops.convert_to_numpy(v) for v in self._random_state_variables()])
        # Keras writes the weights in place; their checksum, written last, tells a whole file.
        with files.writing(self._weights_path):
            super()._save_model()
        self._write_checksums()
        for name in os.listdir(self.backup_dir):  # keep this epoch's and the previous one's
            if name.startswith("random_states_epoch") and name not in (
                    os.path.basename(path), os.path.basename(self._random_states_path(epoch - 1))):
                os.remove(os.path.join(self.backup_dir, name))

    def _restore_random_states(self):
        path = self._random_states_path(self.resumed_epoch(self.backup_dir))
        if not os.path.exists(path):
            return
        variables = self._random_state_variables()
        with np.load(path) as saved:
            states = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if [s.shape for s in states] != [tuple(v.shape) for v in variables]:
            raise BackupError(f"{path} holds {len(states)} random generator states, the model has {len(variables)}: "
                              f"it is another model's backup. Delete {self.backup_dir} to start the run over.")
        for variable, state in zip(variables, states):
            variable.assign(state)


class SaveWeights(keras.callbacks.Callback):
    """The model's weights after every epoch, written atomically (Keras' `ModelCheckpoint` writes in
    place: a kill mid-write left a damaged checkpoint that a resumed, finished fit never rewrote)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        with files.atomic_path(self.path, ".weights.h5") as tmp:
            self.model.save_weights(tmp)


class SegmentationImages(keras.callbacks.Callback):
    """Writes a few fixed images to TensorBoard after every epoch: input, ground truth and the
    maps of `model.visualize` (prediction, and e.g. ALSS's confidence map and semi mask).

    Class maps are coloured with the VOC palette (ignore = light grey); float maps in [0, 1]
    are shown as grayscale, and RGB maps [B, H, W, 3] as images.
    """

    def __init__(self, log_dir, images, labels):
        super().__init__()
        self.log_dir, self.images, self.labels = log_dir, images, labels
        self._writer = None

    @classmethod
    def from_dataset(cls, dataset, cfg, log_dir, count=4):
        batch = next(iter(eval_stream(dataset, cfg, cfg.eval_split, batch_size=count)))
        return cls(os.path.join(log_dir, "images"), batch["image"], batch["label"])

    @staticmethod
    def write(writer, step, images, **maps):
        """Images and their named maps (colourised) as TensorBoard images at `step`."""
        with writer.as_default():
            tf.summary.image("input", tf.cast(images, tf.uint8), step=step, max_outputs=len(images))
            for name, value in maps.items():
                tf.summary.image(name, SegmentationImages.colorize(value), step=step, max_outputs=len(images))
        writer.flush()

    @staticmethod
    def colorize(maps):
        if maps.shape.rank == 4:  # an RGB image (e.g. PseudoSeg's strong view) in [0, 255]
            return tf.cast(tf.clip_by_value(maps, 0.0, 255.0), tf.uint8)
        if maps.dtype.is_floating:
            return tf.cast(tf.clip_by_value(maps, 0.0, 1.0)[..., None] * 255.0, tf.uint8) * tf.ones([3], tf.uint8)
        return tf.gather(tf.constant(VOC_COLORMAP, tf.uint8), tf.cast(maps, tf.int32))

    def on_epoch_end(self, epoch, logs=None):
        self._writer = self._writer or tf.summary.create_file_writer(self.log_dir)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.write(self._writer, step, self.images, ground_truth=self.labels, **self.model.visualize(self.images, self.labels))

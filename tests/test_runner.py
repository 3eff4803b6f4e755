import json
import os

import keras
import pytest

import configs
from tests.conftest import for_method
from tfsemiseg import runner, training
from tfsemiseg.methods import SupOnly


class Interrupt(keras.callbacks.Callback):
    """Stops training like Ctrl-C after `epochs` epochs (their backup written)."""

    def __init__(self, epochs=1):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.slow  # suite budget
def test_an_interrupted_run_resumes_from_its_backup(tmp_path, monkeypatch):
    cfg = configs.get_config("suponly", "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=6, steps_per_epoch=3, crop_size=32, batch_size=2)
    original = SupOnly.extra_callbacks
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [Interrupt()]))
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, verbose=0)
    assert os.path.isdir(os.path.join(cfg.workdir, "backup"))
    assert not os.path.exists(os.path.join(cfg.workdir, "metrics.json"))  # nothing half-written

    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [record, *original(*a)]))
    metrics = runner.train(cfg, verbose=0)
    assert epochs_run == [1]  # epoch 0 was restored, not redone
    assert json.load(open(os.path.join(cfg.workdir, "metrics.json")))["steps"] == 6 == metrics["steps"]


class RecordOptimizers(keras.callbacks.Callback):
    """At the end of training: each optimizer's iteration count and learning rate."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def on_train_end(self, logs=None):
        for name in ("optimizer", "d_optimizer"):
            optimizer = getattr(self.model, name, None)
            if optimizer is not None:
                self.record[name] = (int(optimizer.iterations.numpy()), float(optimizer.learning_rate.numpy()))


@pytest.mark.slow  # suite budget
@pytest.mark.parametrize("method", ["suponly", "alss"])
def test_a_resumed_run_restores_every_optimizer(tmp_path, monkeypatch, method):
    """Regression: ALSS's segmenter optimizer was built on resume over S's and D's variables, Keras skipped
    its saved state ('67 variables whereas the saved optimizer has 57') and the LR schedule restarted."""
    from tfsemiseg.methods import get_method

    cls = get_method(method)
    original = cls.extra_callbacks
    results = {}
    for name, interrupt in (("uninterrupted", False), ("resumed", True)):
        cfg = for_method(configs.get_config(method, "synthetic"),
                         workdir=str(tmp_path / name), iterations=9, steps_per_epoch=3, crop_size=32, batch_size=2,
                         semi_start=3)
        if interrupt:
            monkeypatch.setattr(cls, "extra_callbacks", staticmethod(lambda *a: [Interrupt()]))
            with pytest.raises(KeyboardInterrupt):
                runner.train(cfg, verbose=0)
        record = {}
        monkeypatch.setattr(cls, "extra_callbacks", staticmethod(lambda *a: [RecordOptimizers(record)]))
        runner.train(cfg, verbose=0)
        results[name] = record
        monkeypatch.setattr(cls, "extra_callbacks", original)
    assert results["resumed"] == results["uninterrupted"]
    assert results["resumed"]["optimizer"] == (9, 0.0)  # all 9 steps counted; poly decay reached 0
    if method == "alss":
        assert results["resumed"]["d_optimizer"] == (9, 0.0)


class Poison(keras.callbacks.Callback):
    """After the first epoch (once it is checkpointed), turns a weight into NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            variable = self.model.segmenter.trainable_variables[0]
            variable.assign(variable * float("nan"))


@pytest.mark.parametrize("method", ["suponly", pytest.param("alss", marks=pytest.mark.slow)])  # suite budget
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, monkeypatch, method):
    import numpy as np

    from tfsemiseg.callbacks import TrainingDiverged
    from tfsemiseg.methods import get_method

    cls = get_method(method)
    monkeypatch.setattr(cls, "extra_callbacks", staticmethod(lambda *a: [Poison()]))
    cfg = configs.get_config(method, "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=6, steps_per_epoch=3, crop_size=32, batch_size=2)
    # The NaN layer shows as a NaN loss at the next step, or, where oneDNN's fused batch norm + ReLU
    # maps the NaN activations to 0 and the loss stays finite, as NaN weights at the epoch's end.
    with pytest.raises(TrainingDiverged, match=r"loss\w* is nan at step 4|are NaN or infinite after epoch 2"):
        runner.train(cfg, verbose=0)
    assert not os.path.exists(os.path.join(cfg.workdir, "metrics.json"))
    assert not os.path.exists(os.path.join(cfg.workdir, "final"))
    model = cls.create(cfg, runner.load_dataset(cfg))
    model.load_weights(os.path.join(cfg.workdir, "checkpoints", "ckpt.weights.h5"))
    assert all(np.isfinite(v.numpy()).all() for v in model.segmenter.weights)  # epoch 1's weights
    assert os.path.isdir(os.path.join(cfg.workdir, "backup"))


def _interrupted_run(tmp_path, monkeypatch, epochs_before_interrupt):
    """A SupOnly run stopped after `epochs_before_interrupt` epochs; returns its config."""
    cfg = configs.get_config("suponly", "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=9, steps_per_epoch=3, crop_size=32, batch_size=2)
    original = SupOnly.extra_callbacks
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [Interrupt(epochs_before_interrupt)]))
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, verbose=0)
    monkeypatch.setattr(SupOnly, "extra_callbacks", original)
    return cfg


@pytest.mark.slow  # suite budget
def test_a_damaged_backup_falls_back_to_the_previous_epoch(tmp_path, monkeypatch):
    cfg = _interrupted_run(tmp_path, monkeypatch, 2)
    latest = os.path.join(cfg.workdir, "backup", "latest.weights.h5")
    open(latest, "wb").write(open(latest, "rb").read()[:1000])  # killed while h5py wrote it
    # What a --deterministic run skips of its data stream and whose random states it restores:
    # the epoch Keras falls back to, not the one the damaged backup's metadata names.
    from tfsemiseg.callbacks import Backup
    assert Backup.resumed_epoch(os.path.dirname(latest)) == 1
    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [record]))
    assert runner.train(cfg, verbose=0)["steps"] == 9
    assert epochs_run == [1, 2]  # the previous backup (after epoch 1) was used


def test_a_backup_damaged_mid_file_is_detected_and_the_previous_epoch_resumed(tmp_path, monkeypatch, capsys):
    """Regression: zeros written inside the weights file (h5py still opens it) failed every rerun with
    'wrong B-tree signature', or restarted at epoch 1 without a word, the intact `.bkp` unused."""
    cfg = _interrupted_run(tmp_path, monkeypatch, 2)
    latest = os.path.join(cfg.workdir, "backup", "latest.weights.h5")
    size = os.path.getsize(latest)
    with open(latest, "r+b") as f:  # dd if=/dev/zero of=latest bs=1 seek=4096 count=4096 conv=notrunc
        f.seek(4096)
        f.write(bytes(4096))
    assert os.path.getsize(latest) == size
    from tfsemiseg.callbacks import Backup
    assert Backup.intact(os.path.dirname(latest)) == "previous" and Backup.resumed_epoch(os.path.dirname(latest)) == 1
    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [record]))
    capsys.readouterr()
    assert runner.train(cfg, verbose=0)["steps"] == 9
    assert epochs_run == [1, 2]  # resumed after epoch 1, from the intact previous backup
    assert f"warning: {latest} is damaged" in capsys.readouterr().err


def test_a_half_written_first_backup_starts_the_fit_over_and_says_so(tmp_path, monkeypatch, capsys):
    """Regression: a kill or a full disk while h5py wrote the first epoch's backup (no checksum yet,
    no earlier backup) failed every rerun with h5py's 'addr overflow'."""
    cfg = _interrupted_run(tmp_path, monkeypatch, 1)
    backup = os.path.join(cfg.workdir, "backup")
    latest = os.path.join(backup, "latest.weights.h5")
    open(latest, "wb").write(open(latest, "rb").read()[:4096])
    for name in ("checksums.json", "training_metadata.json"):  # written after the weights
        os.remove(os.path.join(backup, name))
    from tfsemiseg.callbacks import Backup
    assert Backup.intact(backup) == "none" and Backup.resumed_epoch(backup) == 0
    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [record]))
    capsys.readouterr()
    assert runner.train(cfg, verbose=0)["steps"] == 9
    assert epochs_run == [0, 1, 2]
    assert "was not completely written" in capsys.readouterr().err


def test_a_damaged_backup_without_a_previous_one_is_named(tmp_path, monkeypatch):
    from tfsemiseg.callbacks import BackupError

    cfg = _interrupted_run(tmp_path, monkeypatch, 1)
    latest = os.path.join(cfg.workdir, "backup", "latest.weights.h5")
    open(latest, "wb").write(b"\x89HDF\r\n\x1a\n broken")
    with pytest.raises(BackupError, match=r"latest.weights.h5 cannot be read.*Delete .*backup"):
        runner.train(cfg, verbose=0)


@pytest.mark.slow  # suite budget
def test_a_deleted_backup_file_is_not_resumed_from_random_weights(tmp_path, monkeypatch):
    from tfsemiseg.callbacks import BackupError

    cfg = _interrupted_run(tmp_path, monkeypatch, 1)
    os.remove(os.path.join(cfg.workdir, "backup", "latest.weights.h5"))
    with pytest.raises(BackupError, match=r"latest.weights.h5 is missing.*1 epoch"):
        runner.train(cfg, verbose=0)
    assert not os.path.exists(os.path.join(cfg.workdir, "metrics.json"))


@pytest.mark.slow  # suite budget
def test_a_failed_final_evaluation_resumes_without_retraining(tmp_path, monkeypatch):
    cfg = configs.get_config("suponly", "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=6, steps_per_epoch=3, crop_size=32, batch_size=2)
    real = training.fit_stage.__globals__["evaluate_model"]

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setitem(training.fit_stage.__globals__, "evaluate_model", failing)
    with pytest.raises(OSError):
        runner.train(cfg, verbose=0)
    monkeypatch.setitem(training.fit_stage.__globals__, "evaluate_model", real)
    epochs_run = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    monkeypatch.setattr(SupOnly, "extra_callbacks", staticmethod(lambda *a: [record]))
    metrics = runner.train(cfg, verbose=0)
    assert metrics["steps"] == 6
    assert metrics["train_images_per_sec"] is None  # no step was timed: not measured, rather than 0.0
    assert epochs_run == []  # both epochs restored from the kept backup
    assert not os.path.exists(os.path.join(cfg.workdir, "backup"))  # removed once metrics.json exists


@pytest.mark.slow  # suite budget
def test_evaluate_refuses_an_unwritable_run_before_computing(tmp_path, monkeypatch):
    cfg = configs.get_config("suponly", "synthetic").replace(
        workdir=str(tmp_path / "run"), iterations=2, steps_per_epoch=2, crop_size=32, batch_size=2)
    runner.train(cfg, verbose=0)
    monkeypatch.setattr(runner.os, "access", lambda path, mode: False)  # a read-only mount, even for root
    monkeypatch.setattr(runner, "evaluate_model", lambda *a: pytest.fail("evaluated before checking"))
    with pytest.raises(PermissionError, match="is not writable"):
        runner.evaluate(cfg.workdir)


def test_a_changed_image_labels_file_stops_the_resume(tmp_path):
    """PseudoSeg's image-level labels file is part of what a run trains on: changed between a run and
    its resume, the resume is refused (the config holds only its path)."""
    from tfsemiseg.data import build_dataset
    from tfsemiseg.methods import get_method

    labels = tmp_path / "tags.txt"
    labels.write_text("0 disc\n")
    cfg = configs.get_config("pseudoseg", "synthetic").replace(workdir=str(tmp_path / "run"), image_labels=str(labels))
    files = get_method("pseudoseg").input_files(cfg)
    assert files == (str(labels),) and get_method("suponly").input_files(cfg) == ()
    dataset = build_dataset("synthetic", split="1_16", image_size=32)
    os.makedirs(os.path.join(cfg.workdir, "backup"))  # training state
    runner._check_training_data(cfg, dataset, files)
    runner._check_training_data(cfg, dataset, files)  # unchanged: resumes
    labels.write_text("0 disc ring\n")
    with pytest.raises(ValueError, match=f"{labels} has changed since the run started.*--overwrite"):
        runner._check_training_data(cfg, dataset, files)


def test_a_run_saved_before_the_backbone_head_split_is_refused_by_name(tmp_path, monkeypatch):
    """Its weights file has the flat segmenter's layout: refused with what to do, nothing deleted."""
    cfg = _interrupted_run(tmp_path, monkeypatch, 1)
    path = os.path.join(cfg.workdir, "config.json")
    old = json.load(open(path))
    del old["layout"]  # what a run saved before layouts were recorded holds
    json.dump(old, open(path, "w"))
    before = sorted(os.listdir(cfg.workdir))
    with pytest.raises(ValueError, match=r"earlier tfsemiseg \(layout 1.*--overwrite"):
        runner.train(cfg, verbose=0)
    assert sorted(os.listdir(cfg.workdir)) == before

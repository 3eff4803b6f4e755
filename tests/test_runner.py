import json
import os

import keras
import pytest

import configs
from tfsemiseg import runner
from tfsemiseg.methods import SupOnly


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


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

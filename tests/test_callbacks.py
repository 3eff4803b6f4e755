import os

import keras
import numpy as np
import pytest

from tfsemiseg import callbacks


def test_only_a_first_epoch_backup_without_a_checksum_starts_over(tmp_path):
    """A later epoch's backup that lost both its checksum file and its `.bkp` (deleted by hand) is
    named, not silently retrained from epoch 1."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    assert callbacks.Backup.intact(str(backup)) == "none"  # no metadata: killed before it was written
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    assert callbacks.Backup.intact(str(backup)) == "none" and callbacks.Backup.resumed_epoch(str(backup)) == 0
    (backup / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    assert callbacks.Backup.intact(str(backup)) is None


def test_a_kill_while_backing_up_never_leaves_an_epoch_without_its_random_states(tmp_path, monkeypatch):
    """Regression (a --deterministic resume that ended with other weights, seen in CI): Keras wrote
    the backup's metadata before the dropout generators' states, so a kill between the two files
    resumed epoch N with fresh random streams. Now the states come first: a failure while saving
    epoch 2 leaves the backup at epoch 1, with epoch 1's states."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5, seed=1), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = str(tmp_path / "backup")
    saves = []
    real_savez = np.savez

    def savez_failing_at_epoch_2(file, *arrays):
        saves.append(file.name)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed while writing epoch 2's states
        real_savez(file, *arrays)

    monkeypatch.setattr(callbacks.np, "savez", savez_failing_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=3, batch_size=4, verbose=0,
                  callbacks=[callbacks.Backup(backup)])
    assert callbacks.Backup.resumed_epoch(backup) == 1
    assert os.path.exists(os.path.join(backup, "random_states_epoch1.npz"))

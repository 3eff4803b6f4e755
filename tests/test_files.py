import errno
import os

import pytest

from tfsemiseg import files


def test_a_full_disk_in_a_library_names_the_file_being_written(tmp_path):
    path = str(tmp_path / "latest.weights.h5")
    with pytest.raises(OSError) as raised:
        with files.writing(path):  # what h5py raises when its write fails for want of space
            raise RuntimeError("Can't write data (file write failed: ..., errno = 28, "
                               "error message = 'No space left on device')")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == path
    assert files.error_message(raised.value).startswith(f"the disk is full (writing {path}). Free some space")
    assert files.error_message(ValueError("bad --split")) == "bad --split"  # other errors: their own message
    with pytest.raises(ValueError):  # other errors pass unchanged
        with files.writing(path):
            raise ValueError("bad value")


def test_an_interrupted_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "model.keras")
    open(path, "w").write("old")
    with pytest.raises(OSError, match="No space left"):
        with files.atomic_path(path, ".keras") as tmp:
            assert tmp.endswith(".keras") and os.path.dirname(tmp) == str(tmp_path)
            open(tmp, "w").write("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["model.keras"]
    files.atomic_write(path, "new")
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["model.keras"]


def test_an_interrupted_atomic_dir_leaves_neither_the_folder_nor_its_temporary(tmp_path):
    path = str(tmp_path / "labels")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_dir(path) as tmp:
            open(os.path.join(tmp, "a.png"), "w").write("x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with files.atomic_dir(path) as tmp:
        open(os.path.join(tmp, "a.png"), "w").write("x")
    assert os.listdir(path) == ["a.png"] and os.listdir(tmp_path) == ["labels"]

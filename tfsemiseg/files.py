"""Files a run writes: atomic writes and a full disk named by its path.

Everything the project writes goes through here, so a kill at any moment leaves either the old file
or the new one (a temporary name beside it, renamed into place), never half of one, and a full disk
is an `OSError(ENOSPC)` that names the file being written, whichever library (h5py, TensorFlow,
Python) ran out of space. The scripts print it as one `error:` line.
"""

import contextlib
import errno
import hashlib
import os
import shutil


def disk_full(err):
    """Whether an error (from Python, h5py or TensorFlow) is a full disk."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


def error_message(err):
    """What a script tells the user of an error: for a full disk, the file and how to go on; else the
    error's own message."""
    if not disk_full(err):
        return str(err)
    where = getattr(err, "filename", None)
    return (f"the disk is full{f' (writing {where})' if where else ''}. "
            "Free some space, then run the same command again: the last finished epoch is kept.")


@contextlib.contextmanager
def writing(path):
    """Errors of a full disk in the block become `OSError(ENOSPC)` naming `path` (h5py and
    TensorFlow say only "file write failed")."""
    try:
        yield
    except Exception as err:
        if disk_full(err) and getattr(err, "filename", None) is None:
            raise OSError(errno.ENOSPC, "No space left on device", path) from err
        raise


@contextlib.contextmanager
def atomic_path(path, extension=""):
    """Yield a temporary path beside `path` (ending in `extension`, e.g. ".keras" or ".weights.h5",
    which Keras requires) that becomes `path` only if the block completes; removed otherwise, so a
    full disk gets its space back."""
    stem = path[:-len(extension)] if extension and path.endswith(extension) else path
    tmp = f"{stem}.tmp{os.getpid()}{extension}"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a fresh temporary directory that becomes `path` only if the block completes; removed
    otherwise (and, after a kill, by the next attempt)."""
    tmp = f"{path}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a killed attempt
    os.makedirs(tmp)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

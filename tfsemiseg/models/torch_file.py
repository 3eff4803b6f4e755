"""Read a PyTorch state dict saved in the legacy (non-zip) format, without torch and without running code.

A legacy `.pth` file is five pickles and then raw storages:

    magic number, protocol version, system info     (plain values)
    the state dict                                   OrderedDict of tensors; a tensor pickles as
                                                     torch._utils._rebuild_tensor_v2(storage, offset,
                                                     size, stride, ...) and its storage as a
                                                     persistent id ("storage", type, key, device, numel)
    the storage keys, in the order of the data
    per storage: int64 element count, then the little-endian elements

`read_state_dict` unpickles with a restricted unpickler: the only globals it resolves are
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (replaced by a function that
records the view) and the storage types (replaced by numpy dtypes). Any other global -- the way
a pickle runs code -- raises `UnsafeFileError`, so a weights file from elsewhere can never
execute anything. Tensors become numpy arrays.

    state = read_state_dict("efficientnet-lite0-57934424.pth")
    state["_conv_stem.weight"].shape   # (32, 3, 3, 3)
"""

import collections
import pickle
import struct

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeFileError(pickle.UnpicklingError):
    """The file asks the unpickler for something other than tensors: it is refused, not run."""


_TensorView = collections.namedtuple("_TensorView", "storage_key offset size stride")


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """Stands in for torch._utils._rebuild_tensor_v2: records which view of which storage."""
    return _TensorView(storage[0], offset, tuple(size), tuple(stride))


class _Storage(tuple):
    """(key, dtype, numel) of a storage named by a persistent id."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise UnsafeFileError(f"{self.path}: refusing to unpickle {module}.{name}; a weights file may only hold "
                              "tensors (a pickle that names anything else could run code).")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"{self.path}: unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafeFileError(f"{self.path}: storage views are not supported (persistent id {pid!r})")
        if dtype not in STORAGE_DTYPES.values():
            raise UnsafeFileError(f"{self.path}: unexpected storage type {dtype!r}")
        self.storages[key] = (dtype, numel)
        return _Storage((key, dtype, numel))


def read_state_dict(path):
    """{name: numpy array} of a legacy-format PyTorch state dict file (see the module docstring)."""
    with open(path, "rb") as f:
        def header():
            return _RestrictedUnpickler(f, path).load()

        if header() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy-format PyTorch file (a zip-format file needs torch >= 1.6's "
                             "reader; this one reads only the older format).")
        header()  # protocol version
        header()  # system info: endianness and type sizes (little-endian assumed; checked by the values)
        unpickler = _RestrictedUnpickler(f, path)
        state = unpickler.load()
        keys = header()
        data = {}
        for key in keys:
            dtype, numel = unpickler.storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            if count != numel:
                raise ValueError(f"{path}: storage {key} holds {count} elements, its tensors expect {numel}")
            raw = f.read(count * np.dtype(dtype).itemsize)
            if len(raw) != count * np.dtype(dtype).itemsize:
                raise ValueError(f"{path}: truncated inside storage {key}")
            data[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found a {type(state).__name__}")
    arrays = collections.OrderedDict()
    for name, view in state.items():
        if not isinstance(view, _TensorView):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        storage = data[view.storage_key]
        last = view.offset + sum((n - 1) * s for n, s in zip(view.size, view.stride) if n > 0)
        if min(view.stride, default=0) < 0 or (0 not in view.size and last >= len(storage)):
            raise ValueError(f"{path}: entry {name!r} reaches outside its storage")
        item = storage.itemsize
        arrays[name] = np.lib.stride_tricks.as_strided(
            storage[view.offset:], shape=view.size, strides=[s * item for s in view.stride]).copy()
    return arrays

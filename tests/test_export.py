import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import write_image
from tfsemiseg import export
from tfsemiseg.config import Config
from tfsemiseg.models.segmenters import build_segmenter
from tfsemiseg.training import save_segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.fixture
def run_dir(tmp_path):
    """A finished run at image_scale 0.5 (as the CamVid setting): config.json + final/segmenter.keras."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(Config(dataset="camvid", image_scale=0.5).to_json())
    save_segmenter(build_segmenter("deeplabv3plus", "tiny", 5), str(workdir / "final" / "segmenter.keras"))
    return str(workdir)


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_serving_signatures_agree_with_predict_in_a_fresh_process(run_dir, tmp_path):
    """Regression: the SavedModel ignored the run's image_scale (59 % agreement with predict.py)."""
    images = []
    for name, (h, w) in {"odd": (37, 53), "wide": (24, 71)}.items():
        images.append(str(tmp_path / "in" / f"{name}.png"))
        write_image(images[-1], h, w, seed=len(images))
    export_dir = str(tmp_path / "served" / "1")
    proc = script("export.py", f"--workdir={run_dir}", f"--output={export_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = script("predict.py", f"--workdir={run_dir}", f"--output_dir={tmp_path / 'pred'}", "--nocolour", *images)
    assert proc.returncode == 0, proc.stderr[-2000:]

    client = f"""
import json, sys, numpy as np, tensorflow as tf
model = tf.saved_model.load({export_dir!r})
out = {{}}
for path in {images!r}:
    data = open(path, "rb").read()
    by_bytes = model.signatures["serving_default"](image_bytes=tf.constant([data]))
    pixels = tf.io.decode_png(data, channels=3)[None]
    by_pixels = model.signatures["serve_pixels"](images=pixels)
    by_float = model.signatures["serve"](images=tf.cast(pixels, tf.float32))
    out[path] = dict(bytes=by_bytes["classes"].numpy()[0].tolist(), pixels=by_pixels["classes"].numpy()[0].tolist(),
                     float=by_float["labels"].numpy()[0].tolist(), dtype=by_bytes["classes"].dtype.name,
                     confidence=float(tf.reduce_min(by_bytes["confidence"])))
try:  # a rank-3 image is refused by the declared signature, with a message (not an abort)
    model.signatures["serve_pixels"](images=tf.zeros([8, 8, 3], tf.uint8))
    out["rank3"] = "accepted"
except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
    out["rank3"] = str(err)
json.dump(out, sys.stdout)
"""
    proc = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout)
    assert "expected a batch of RGB images" in served.pop("rank3")  # an error for the client; the server lives on
    for path in images:
        predicted = tf.io.decode_png(tf.io.read_file(str(tmp_path / "pred" / os.path.basename(path)))).numpy()[..., 0]
        result = served[path]
        assert result["dtype"] == "uint8" and 1 / 5 <= result["confidence"] <= 1
        for key in ("bytes", "pixels", "float"):
            np.testing.assert_array_equal(np.array(result[key]), predicted)


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_export_refuses_to_overwrite_a_version(run_dir, tmp_path):
    target = str(tmp_path / "m" / "1")
    assert script("export.py", f"--workdir={run_dir}", f"--output={target}").returncode == 0
    proc = script("export.py", f"--workdir={run_dir}", f"--output={target}")
    assert proc.returncode != 0 and "exists and is not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert script("export.py", f"--workdir={run_dir}", f"--output={target}", "--overwrite").returncode == 0
    # Regression: a file in the way of the output folder ended in a FailedPreconditionError traceback.
    (tmp_path / "model.png").write_bytes(b"keep me")
    proc = script("export.py", f"--workdir={run_dir}", f"--output={tmp_path / 'model.png' / '1'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: Cannot write the SavedModel to {tmp_path / 'model.png' / '1'}:" in proc.stderr
    assert (tmp_path / "model.png").read_bytes() == b"keep me"


def test_predict_files_keeps_same_named_inputs_apart_and_skips_a_bad_image(tmp_path):
    seg = build_segmenter("deeplabv2", "tiny", 3)
    paths = [str(tmp_path / d / "x.png") for d in ("a", "b")] + [str(tmp_path / "c" / "bad.png"),
                                                                  str(tmp_path / "c" / "y.png")]
    for p in (paths[0], paths[1], paths[3]):
        write_image(p, 24, 40)
    open(paths[2], "wb").write(b"\x89PNG not really")
    written, failed = export.predict_files(seg, paths, str(tmp_path / "out"), colour=False)
    assert sorted(os.path.basename(p) for p in written) == sorted(
        [f"{str(tmp_path / 'a' / 'x').strip(os.sep).replace(os.sep, '_')}.png",
         f"{str(tmp_path / 'b' / 'x').strip(os.sep).replace(os.sep, '_')}.png", "y.png"])
    assert failed == [(paths[2], "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.")]
    labels = tf.io.decode_png(tf.io.read_file(written[-1])).numpy()
    assert labels.shape == (24, 40, 1) and labels.max() < 3


def test_export_to_a_file_is_refused_and_the_file_kept(tmp_path):
    """Regression: --output=<an existing file> ended in TensorFlow's FailedPreconditionError traceback."""
    target = tmp_path / "model.png"
    target.write_bytes(b"keep me")
    with pytest.raises(export.ExportError, match=f"{target} is a file: --output names the SavedModel's directory"):
        export.export_saved_model(build_segmenter("deeplabv2", "tiny", 3), str(target), overwrite=True)
    assert target.read_bytes() == b"keep me"


def test_predict_names_why_an_input_cannot_be_read(tmp_path):
    """Regression: the reasons printed were TF's ("{{function_node __wrapped__ReadFile...}}",
    "Expected 'tf.Tensor(False, ...)' to be true", "remove it from the split")."""
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _, failed = export.predict_files(build_segmenter("deeplabv2", "tiny", 3), [str(tmp_path / "missing.png"), str(text)],
                                     str(tmp_path / "out"))
    assert failed == [(str(tmp_path / "missing.png"), "no such file"),
                      (str(text), "not a PNG or JPEG file (empty, corrupt or wrong format)")]


def test_predictions_of_images_that_differ_only_by_extension_or_folder_do_not_collide(tmp_path):
    """Regression: a.jpg and a.png stopped predict.py with "Two inputs would write the same
    prediction file", naming neither; the same image given twice is named."""
    assert export.output_names(["a.jpg", "a.png", "d/x.png", "e/x.png", "y.png"]) == [
        "a_jpg.png", "a_png.png", "d_x.png", "e_x.png", "y.png"]
    assert export.output_names(["d/a.jpg", "d/a.png", "e/a.png"]) == ["d_a_jpg.png", "d_a_png.png", "e_a.png"]
    with pytest.raises(export.ExportError, match=r"\./y\.png is given twice \(y\.png and \./y\.png\)"):
        export.output_names(["y.png", "./y.png"])


def test_final_model_loads_in_a_fresh_process_after_importing_the_models_package(run_dir):
    code = (f"import tfsemiseg.models, keras; m = keras.saving.load_model({run_dir!r} + '/final/segmenter.keras'); "
            "print(m(keras.ops.zeros((1, 33, 47, 3))).shape)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("(1, 33, 47, 5)")


def test_an_interrupted_export_leaves_no_version_for_serving_and_a_new_export_works(tmp_path, monkeypatch):
    import keras

    segmenter = build_segmenter("deeplabv2", "tiny", 3)
    target = tmp_path / "camvid" / "1"
    target.parent.mkdir()
    archive_class = type(keras.export.ExportArchive())  # the backend's class the factory returns
    original = archive_class.write_out

    def killed_midway(self, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"))  # what an interrupted write left: an empty variables/
        raise KeyboardInterrupt

    monkeypatch.setattr(archive_class, "write_out", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(segmenter, str(target))
    assert os.listdir(target.parent) == []  # no version folder, no leftovers
    monkeypatch.setattr(archive_class, "write_out", original)
    export.export_saved_model(segmenter, str(target))
    assert sorted(os.listdir(target.parent)) == ["1"] and (target / "saved_model.pb").exists()
    # --overwrite replaces a version only once the new one is whole
    export.export_saved_model(segmenter, str(target), overwrite=True)
    assert sorted(os.listdir(target.parent)) == ["1"] and (target / "saved_model.pb").exists()


def test_predict_takes_the_images_of_a_folder_and_refuses_one_without(run_dir, tmp_path):
    """Regression: `predict.py DIR` ended in a FailedPreconditionError traceback."""
    folder = tmp_path / "images"
    for name in ("b.png", "a.jpg"):
        write_image(str(folder / name), 20, 24)
    (folder / "notes.txt").write_text("not an image")
    proc = script("predict.py", f"--workdir={run_dir}", f"--output_dir={tmp_path / 'out'}", str(folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]
    (tmp_path / "empty").mkdir()
    proc = script("predict.py", f"--workdir={run_dir}", f"--output_dir={tmp_path / 'out2'}", str(tmp_path / "empty"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: {tmp_path / 'empty'} is a folder without images" in proc.stderr


def test_serving_signatures_answer_wrong_input_in_words_a_client_understands(tmp_path):
    """Checked in the graph (so TF Serving gives the same answer): rank, channels, empty batch, empty
    bytes, mixed sizes in one request, instead of TensorFlow's internals."""
    import io as bytes_io

    from PIL import Image

    target = tmp_path / "m" / "1"
    export.export_saved_model(build_segmenter("deeplabv2", "tiny", 3), str(target))
    loaded = tf.saved_model.load(str(target))

    def png(height, width):
        buffer = bytes_io.BytesIO()
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    cases = [
        ("serve_pixels", tf.zeros([16, 16, 3], tf.uint8), "expected a batch of RGB images"),
        ("serve_pixels", tf.zeros([1, 16, 16, 4], tf.uint8), "expected 3 channels"),
        ("serve", tf.zeros([0, 16, 16, 3]), "the batch is empty"),
        ("serve", tf.zeros([1, 0, 16, 3]), "an image has no pixels"),
        ("serving_default", tf.constant([png(8, 8), b""]), "an empty string; send the bytes"),
        ("serving_default", tf.constant([png(8, 8), png(8, 12)]), "must share a size"),
        ("serving_default", tf.constant([], tf.string), "the batch is empty"),
    ]
    for signature, value, message in cases:
        name = "image_bytes" if signature == "serving_default" else "images"
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[signature](**{name: value})
    # Right input still works, one image as a batch of one.
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([png(8, 8), png(8, 8)]))
    assert out["classes"].shape == (2, 8, 8)
    assert loaded.signatures["serve_pixels"](images=tf.zeros([1, 9, 7, 3], tf.uint8))["classes"].shape == (1, 9, 7)

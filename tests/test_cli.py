"""The command line end to end on the built-in dataset, as a user runs it."""

import json
import os
import re
import subprocess
import sys

import pytest

from tfsemiseg.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


TINY = ["--dataset=synthetic", "--iterations=6", "--set", "steps_per_epoch=3", "--set", "crop_size=32",
        "--set", "batch_size=2", "--verbose=0"]


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_train_evaluate_rerun_and_overwrite_synthetic(tmp_path):
    workdir = str(tmp_path / "run")
    proc = run("train.py", "--method=suponly", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val mIoU:" in proc.stdout
    for noise in ("cuInit", "oneDNN", "I0000", "is deprecated"):  # TensorFlow's start-up lines are hidden
        assert noise not in proc.stderr, proc.stderr[-2000:]
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in ("miou", "per_class_iou", "method", "dataset", "split", "steps", "train_images_per_sec"):
        assert key in metrics
    assert metrics["steps"] == 6 and metrics["method"] == "suponly" and metrics["split"] == "1_16"
    assert set(metrics["per_class_iou"]) == {"background", "disc", "square", "triangle", "ring", "cross"}
    assert 0.0 <= metrics["miou"] <= 1.0
    for path in ("config.json", "final/segmenter.keras", "checkpoints/ckpt.weights.h5"):
        assert os.path.exists(os.path.join(workdir, path)), path
    assert os.listdir(os.path.join(workdir, "logs"))  # TensorBoard event files

    proc = run("evaluate.py", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.load(open(os.path.join(workdir, "metrics_val.json")))
    assert evaluated["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    assert json.load(open(os.path.join(workdir, "metrics.json"))) == metrics  # untouched

    # The same run again: not retrained; with another configuration: refused; --overwrite: retrained.
    proc = run("train.py", "--method=suponly", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0 and "holds a finished run" in proc.stdout and "evaluate.py" in proc.stdout
    assert json.load(open(os.path.join(workdir, "metrics.json"))) == metrics
    proc = run("train.py", "--method=suponly", f"--workdir={workdir}", *TINY, "--set", "lr=0.5")
    assert proc.returncode != 0 and "another configuration" in proc.stderr
    with open(os.path.join(workdir, "notes.txt"), "w") as f:
        f.write("mine")
    proc = run("train.py", "--method=suponly", f"--workdir={workdir}", *TINY, "--overwrite")
    assert proc.returncode == 0 and "val mIoU:" in proc.stdout
    assert open(os.path.join(workdir, "notes.txt")).read() == "mine"  # only what the run wrote is replaced

    # A damaged final model is named by every command that reads it (no "file not found", no traceback).
    model = os.path.join(workdir, "final", "segmenter.keras")
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    for script, extra in (("train.py", ["--method=suponly", *TINY]), ("evaluate.py", []), ("export.py", []),
                          ("predict.py", [os.path.join(ROOT, "tests", "__init__.py")])):
        proc = run(script, f"--workdir={workdir}", *extra)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (script, proc.stderr[-2000:])
        assert f"{model} is missing or damaged" in proc.stderr or f"{model} cannot be read" in proc.stderr, script


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    photos = tmp_path / "d" / "photos"
    photos.mkdir(parents=True)
    (photos / "a.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        proc = run("train.py", "--method=suponly", f"--workdir={tmp_path / 'd'}", *TINY, *extra)
        assert proc.returncode != 0 and "error: --workdir=" in proc.stderr and "photos" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert sorted(os.listdir(tmp_path / "d")) == ["photos"] and (photos / "a.txt").read_text() == "x"


def test_voc_missing_says_where_to_put_it(tmp_path):
    proc = run("train.py", "--method=suponly", "--split=1464", f"--workdir={tmp_path}/w",
               env={"TFSEMISEG_DATA": str(tmp_path / "data")})
    assert proc.returncode != 0
    assert "VOCdevkit/VOC2012" in proc.stderr and "--data_dir" in proc.stderr


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_camvid_folder_dataset(camvid_tree, tmp_path):
    workdir = str(tmp_path / "cv")
    proc = run("train.py", "--method=suponly", "--dataset=camvid", f"--data_dir={camvid_tree}", "--split=1_4",
               f"--workdir={workdir}", "--iterations=2", "--set", "steps_per_epoch=2", "--set", "crop_size=16",
               "--set", "batch_size=2", "--set", "image_scale=1", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert len(metrics["per_class_iou"]) == 11 and metrics["split"] == "1_4"


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_alss_with_xla(tmp_path):
    workdir = str(tmp_path / "xla")
    proc = run("train.py", "--method=alss", "--jit_compile", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(os.path.join(workdir, "config.json")))["jit_compile"] is True
    assert json.load(open(os.path.join(workdir, "metrics.json")))["method"] == "alss"


@pytest.mark.parametrize("subset,name", [("val", "v001.png"), ("train", "f001.png")])
def test_a_bad_label_is_named_before_training(camvid_tree, tmp_path, subset, name):
    """Regression: the CLI printed only 'Graph execution error:', and val files were read after training."""
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((24, 32), 300, np.uint16)).save(os.path.join(camvid_tree, f"{subset}annot", name))
    workdir = str(tmp_path / "cv")
    proc = run("train.py", "--method=alss", "--dataset=camvid", f"--data_dir={camvid_tree}", "--split=1_4",
               f"--workdir={workdir}", "--iterations=2", "--set", "steps_per_epoch=2", "--set", "crop_size=32",
               "--set", "batch_size=2", "--set", "image_scale=1", "--verbose=0")
    assert proc.returncode != 0
    assert f"16-bit label with values above 255: {camvid_tree}/{subset}annot/{name}" in proc.stderr
    assert "Graph execution error" not in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "backup"))  # no training started


@pytest.mark.slow  # suite budget
def test_a_diverged_run_exits_non_zero_and_names_the_loss(tmp_path):
    """Regression: lr=1e6 printed loss_ce: nan, exited 0 and wrote an mIoU."""
    workdir = str(tmp_path / "nan")
    proc = run("train.py", f"--workdir={workdir}", *TINY, "--set", "lr=1e6")
    assert proc.returncode != 0
    assert re.search(r"error: loss_ce is (nan|inf) at step", proc.stderr) and "--set lr=" in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))


@pytest.mark.parametrize("args,message", [
    (["--iterations=0"], "--iterations=0: must be a positive"),
    (["--iterations=-5"], "--iterations=-5: must be a positive"),
    (["--iterations=25", "--set", "steps_per_epoch=10"], "--iterations=25: not a whole number of epochs of "
     "steps_per_epoch=10 (the logging, checkpoint and resume cadence), so Keras would train 30 steps. Use 20 or "
     "30, or --set steps_per_epoch=5."),
    (["--set", "steps_per_epoch=0"], "--set steps_per_epoch=0"),
    (["--set", "batch_size=0"], "--batch_size=0"),
    (["--set", "image_scale=0"], "--set image_scale=0"),
    (["--set", "scale_range=abc"], "--set scale_range=('abc',): must be two numbers"),
    (["--split=1_0"], "--split=1_0: a fraction a_b needs 0 < a <= b"),
    (["--method=datasets"], "Unknown --method='datasets'; choose one of " + ", ".join(METHODS)),
    (["--method=foo"], "Unknown --method='foo'; choose one of"),
    (["--method=pseudoseg", "--set", "image_labels=no_such_tags.txt"],
     "Image-level labels file no_such_tags.txt does not exist. Pass an existing file to --set image_labels"),
])
def test_bad_settings_are_named_without_a_traceback(tmp_path, args, message):
    workdir = str(tmp_path / "bad")
    proc = run("train.py", f"--workdir={workdir}", *TINY, *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_a_failed_start_does_not_block_the_corrected_command_and_the_workdir_can_move(tmp_path):
    workdir = str(tmp_path / "run")
    assert run("train.py", f"--workdir={workdir}", *TINY, "--split=1_0").returncode != 0
    proc = run("train.py", f"--workdir={workdir}/", *TINY)  # trailing slash: the same run
    assert proc.returncode == 0, proc.stderr[-2000:]
    moved = str(tmp_path / "moved")
    os.rename(workdir, moved)
    os.remove(os.path.join(moved, "metrics.json"))  # as if interrupted after training: resumes, not refused
    proc = run("train.py", f"--workdir={moved}", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_resuming_on_an_edited_split_is_refused_and_the_run_kept(camvid_tree, tmp_path):
    """Regression: a run resumed after its split file was edited finished silently on other images."""
    args = ["--method=suponly", "--dataset=camvid", f"--data_dir={camvid_tree}", "--split=1_4",
            f"--workdir={tmp_path / 'cv'}", "--iterations=2", "--set", "steps_per_epoch=1", "--set", "crop_size=16",
            "--set", "batch_size=2", "--set", "image_scale=1", "--verbose=0"]
    assert run("train.py", *args).returncode == 0
    os.remove(tmp_path / "cv" / "metrics.json")  # as if interrupted after training
    record = (tmp_path / "cv" / "training_data.json").read_text()
    with open(os.path.join(camvid_tree, "splits", "1_4", "labeled.txt"), "a") as f:
        f.write("f007.png\n")
    proc = run("train.py", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "holds a run started on other training data (the labeled set has 3 images, the run started with 2)" \
        in proc.stderr and "--overwrite" in proc.stderr
    assert (tmp_path / "cv" / "training_data.json").read_text() == record  # nothing overwritten
    assert os.path.exists(tmp_path / "cv" / "final" / "segmenter.keras")


def _final_weights(workdir):
    import keras

    import tfsemiseg.models.segmenters  # noqa: F401  (registers the custom layers)
    return [w.numpy() for w in keras.saving.load_model(os.path.join(workdir, "final", "segmenter.keras")).weights]


DETERMINISTIC = ["--dataset=synthetic", "--iterations=45", "--set", "steps_per_epoch=15", "--set", "crop_size=32",
                 "--set", "batch_size=2", "--seed=3", "--deterministic", "--verbose=0"]


@pytest.mark.slow  # suite budget
@pytest.mark.parametrize("method", ["suponly", "alss"])
def test_deterministic_runs_and_a_killed_run_resumed_give_the_same_weights(tmp_path, method):
    """Regression: the same --seed gave different losses; a resumed ALSS run restarted its LR schedule."""
    import signal
    import time

    import numpy as np

    args = [f"--method={method}", *DETERMINISTIC] + (["--set", "semi_start=10"] if method == "alss" else [])
    # One run straight through; another with the same --seed killed once its first epoch is backed up,
    # then the same command run again: equal weights show both determinism and an exact resume.
    runs = [str(tmp_path / name) for name in ("a", "killed")]
    proc = run("train.py", f"--workdir={runs[0]}", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]

    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--workdir={runs[1]}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metadata = os.path.join(runs[1], "backup", "training_metadata.json")
    deadline = time.time() + 300
    while not os.path.exists(metadata) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(runs[1], "metrics.json")), "killed too late; make the epochs longer"
    resumed = run("train.py", f"--workdir={runs[1]}", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    metrics = [json.load(open(os.path.join(w, "metrics.json"))) for w in runs]
    assert metrics[0]["miou"] == metrics[1]["miou"]
    assert metrics[1]["steps"] == 45
    for a, b in zip(_final_weights(runs[0]), _final_weights(runs[1])):
        np.testing.assert_array_equal(a, b)



@pytest.mark.parametrize("signum", [pytest.param("SIGINT", marks=pytest.mark.slow), "SIGTERM"])  # suite budget
def test_an_interrupted_run_says_how_to_resume_without_a_traceback(tmp_path, signum):
    import signal
    import time

    workdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--workdir={workdir}",
                             "--dataset=synthetic", "--iterations=400", "--set", "steps_per_epoch=2", "--set",
                             "crop_size=32", "--set", "batch_size=2", "--verbose=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 300
    while not (workdir / "backup").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: run the same command to resume" in err and "Traceback" not in err
    assert not (workdir / "metrics.json").exists() and (workdir / "config.json").exists()


@pytest.mark.slow  # suite budget
def test_a_second_process_on_a_run_is_refused_and_names_the_first(tmp_path):
    import fcntl

    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / "run.lock", "w") as held:  # what a training train.py holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        proc = run("train.py", f"--workdir={workdir}", *TINY)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: --workdir={workdir} is in use by another train.py (process 4242)" in proc.stderr
    assert sorted(os.listdir(workdir)) == ["run.lock"]  # nothing written
    proc = run("train.py", f"--workdir={workdir}", *TINY)  # released (as when the first ends, even killed)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow  # suite budget
def test_a_full_disk_is_named_in_one_line_and_the_run_resumes(tmp_path):
    """An OSError(ENOSPC) where the final model is written (as from a full disk): one error line naming
    the path; the last finished epoch's backup is kept, so the same command then finishes the run."""
    workdir = tmp_path / "run"
    inject = ("import errno, runpy, sys\n"
              f"sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})\n"
              "import _bootstrap\n"
              "from tfsemiseg import training\n"
              "original = training.save_segmenter\n"
              "def full(segmenter, path):\n"
              "    if 'final' not in path:\n"
              "        return original(segmenter, path)\n"
              "    raise OSError(errno.ENOSPC, 'No space left on device', path)\n"
              "training.save_segmenter = full\n"
              f"sys.argv = ['train.py', '--workdir={workdir}'] + {TINY!r}\n"
              f"runpy.run_path({os.path.join(ROOT, 'scripts', 'train.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", inject], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode not in (0, 139) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    final = os.path.join(workdir, "final", "segmenter.keras")
    assert f"error: the disk is full (writing {final})" in proc.stderr and "run the same command" in proc.stderr
    assert (workdir / "backup").exists() and not (workdir / "metrics.json").exists()
    proc = run("train.py", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0 and "val mIoU:" in proc.stdout, proc.stderr[-2000:]


def _can_mount_a_tmpfs(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_a_real_full_disk_is_named_and_the_run_finishes_once_there_is_space(tmp_path):
    """On an 8 MB tmpfs (a user namespace's mount: no root needed where the kernel allows it) the
    first epoch's backup does not fit. Regression: h5py's error was printed without the file's name,
    and the half-written backup then failed every rerun ('addr overflow')."""
    if not _can_mount_a_tmpfs(tmp_path):
        pytest.skip("this machine cannot mount a tmpfs in a user namespace (unshare -rm)")
    disk = tmp_path / "disk"
    disk.mkdir()
    train = f"{sys.executable} {os.path.join(ROOT, 'scripts', 'train.py')} --workdir={disk}/run {' '.join(TINY)}"
    script = (f"set -u; cd {ROOT}; mount -t tmpfs -o size=8m tmpfs {disk}\n"
              f"{train} > {tmp_path}/1.out 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.rc\n"
              f"mount -o remount,size=256m {disk}\n"
              f"{train} > {tmp_path}/2.out 2> {tmp_path}/2.err; echo $? > {tmp_path}/2.rc\n"
              f"cp {disk}/run/metrics.json {tmp_path}/metrics.json\n")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], timeout=1200, env=os.environ)
    first, second = ((tmp_path / f"{i}.err").read_text() for i in (1, 2))
    assert (tmp_path / "1.rc").read_text().strip() not in ("0", "139"), first[-2000:]
    assert "Traceback" not in first and "error: the disk is full (writing " in first, first[-2000:]
    assert re.search(r"error: the disk is full \(writing \S+/run/\S+\)\. Free some space", first), first[-2000:]
    assert (tmp_path / "2.rc").read_text().strip() == "0", second[-2000:]
    assert "val mIoU:" in (tmp_path / "2.out").read_text()
    assert json.load(open(tmp_path / "metrics.json"))["steps"] == 6

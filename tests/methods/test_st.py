import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import configs
from tfsemiseg import runner
from tfsemiseg.data import build_dataset, pipeline
from tests.conftest import write_image
from tfsemiseg.methods import st
from tfsemiseg.methods.st import SelfTraining, SelfTrainingPlus, split_reliable, stability_scores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stability_score_by_hand():
    final = tf.constant([[[0, 0], [1, 1]]])
    same = final
    all_zero = tf.zeros_like(final)  # class 0: 2/4, class 1: 0/2 -> mIoU 0.25
    score = stability_scores([same, all_zero], final, num_classes=2)
    np.testing.assert_allclose(score.numpy(), [(1.0 + 0.25) / 2], atol=1e-6)

    # Padding (valid 0) is not counted: only the top row is compared, where all_zero is right.
    valid = tf.constant([[[1, 1], [0, 0]]], tf.uint8)
    np.testing.assert_allclose(stability_scores([all_zero], final, 2, valid).numpy(), [1.0], atol=1e-6)

    # One score per image of the batch.
    batch = tf.concat([final, 1 - final], 0)
    np.testing.assert_allclose(stability_scores([batch], tf.concat([final, final], 0), 2).numpy(), [1.0, 0.0])


def test_reliable_half_is_the_most_stable():
    keys = ["a", "b", "c", "d", "e"]
    reliable, unreliable = split_reliable(keys, [0.2, 0.9, 0.5, 0.9, 0.1])
    assert reliable == ["b", "d"]  # floor(5 / 2), ties keep key order
    assert unreliable == ["c", "a", "e"]
    assert split_reliable(keys, [0.2, 0.9, 0.5, 0.9, 0.1], fraction=0.6)[0] == ["b", "d", "c"]


def test_keys_round_trip_through_text(tmp_path):
    keys = [("dir/a.png", "dir/a_L.png"), ("dir/b.png", "dir/b_L.png")]
    st._write_keys(tmp_path / "k.txt", keys)
    assert st._read_keys(tmp_path / "k.txt") == keys
    st._write_keys(tmp_path / "i.txt", [3, 17])
    assert st._read_keys(tmp_path / "i.txt") == [3, 17]
    # A labelling stage pairs its keys with its PNGs, line by line.
    st._write_keys(tmp_path / "keys.txt", keys)
    (tmp_path / "labels.txt").write_text("a.png\nb.png\n")
    assert st.read_pseudo_labels(str(tmp_path)) == [(keys[0], str(tmp_path / "a.png")),
                                                    (keys[1], str(tmp_path / "b.png"))]


def test_mixed_stream_draws_at_the_given_rates():
    cfg = configs.get_config("st", "synthetic").replace(batch_size=10)
    ones = tf.data.Dataset.from_tensors({"label": tf.constant(1)}).repeat()
    zeros = tf.data.Dataset.from_tensors({"label": tf.constant(0)}).repeat()
    labels = np.concatenate([b["label"].numpy() for b in pipeline.mixed_stream([ones, zeros], [3, 1], cfg).take(100)])
    assert abs(labels.mean() - 0.75) < 0.05
    assert 0 < labels[:10].sum() < 10 or 0 < labels[10:20].sum() < 10  # mixed within batches


def test_relabeled_synthetic_images_read_their_png_labels(tmp_path):
    dataset = build_dataset("synthetic", split="1_16", image_size=32)
    keys = dataset.unlabeled[:3]
    files = []
    for i, key in enumerate(keys):
        path = str(tmp_path / f"{key}.png")
        tf.io.write_file(path, tf.io.encode_png(tf.fill([32, 32, 1], tf.constant(i, tf.uint8))))
        files.append(path)
    examples = list(dataset.relabeled(keys, files).examples("labeled"))
    originals = list(dataset.examples("unlabeled").take(3))
    for i, (example, original) in enumerate(zip(examples, originals)):
        np.testing.assert_array_equal(example["image"], original["image"])
        assert np.all(example["label"].numpy() == i)


def test_pseudo_labels_are_written_at_each_images_size_on_disk(tmp_path):
    labels = tf.constant([[1, 2, 0], [3, 4, 0], [0, 0, 0]])  # a 2 x 2 image padded to 3 x 3
    valid = tf.constant([[1, 1, 0], [1, 1, 0], [0, 0, 0]], tf.uint8)
    st._write_png(str(tmp_path / "x.png"), labels, valid, tf.constant([4, 4]))  # image_scale 0.5
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "x.png")))[..., 0].numpy()
    np.testing.assert_array_equal(png, np.kron([[1, 2], [3, 4]], np.ones((2, 2), np.uint8)))


def test_inference_stream_pads_and_reports_sizes(camvid_tree):
    # f002 (the first unlabeled image of split 1_4) is made smaller than the others (24 x 32).
    write_image(os.path.join(camvid_tree, "train", "f002.png"), height=16, width=20)
    dataset = build_dataset("camvid", camvid_tree, "1_4")
    cfg = configs.get_config("st", "camvid").replace(image_scale=0.5, eval_batch_size=2)
    batch = next(iter(pipeline.inference_stream(dataset, cfg, "unlabeled")))
    assert batch["image"].shape[1:3] == (12, 16)  # the larger image, at half scale
    np.testing.assert_array_equal(batch["size"].numpy(), [[16, 20], [24, 32]])
    valid = batch["valid"].numpy()
    assert valid[0, :8, :10].all() and not valid[0, 8:].any() and not valid[0, :, 10:].any()
    assert valid[1].all()


def test_paper_schedule_counts_epochs_over_each_stage_list(tmp_path):
    cfg = configs.get_config("stpp", "synthetic").replace(workdir=str(tmp_path), stage_epochs=9, batch_size=8)
    dataset = build_dataset("synthetic", split="1_16")  # 32 labeled, 480 unlabeled
    driver = SelfTrainingPlus(cfg, dataset, tf.distribute.get_strategy(), verbose=0)
    teacher = driver.stage_config(driver.PLAN[0], 0)  # 32 < 200 labeled ids are repeated 7 times: 224 images
    assert (teacher.steps_per_epoch, teacher.iterations) == (28, 9 * 28)
    assert driver.snapshot_steps(teacher) == (84, 168)  # 1/3 and 2/3 of 252 steps
    student = driver.stage_config(driver.PLAN[5], 480)  # 32 x 15 + 480 = 960 images
    assert (student.steps_per_epoch, student.iterations) == (120, 9 * 120)


def test_cpu_settings_train_students_the_papers_epochs_relative_to_the_teacher(tmp_path):
    """The CPU settings count the teacher's iterations; a student trains as many epochs over its list
    as the teacher over its own (not a fixed shorter count: short students unlearned small classes)."""
    cfg = configs.get_config("stpp", "synthetic").replace(workdir=str(tmp_path))
    dataset = build_dataset("synthetic", split="1_16")  # 32 labeled (x 7 = 224 a teacher epoch), 480 unlabeled
    driver = SelfTrainingPlus(cfg, dataset, tf.distribute.get_strategy(), verbose=0)
    assert driver.stage_config(driver.PLAN[0], 0).iterations == cfg.iterations == 3000
    # 3000 x 496 / 224 = 6643 and 3000 x 960 / 224 = 12857, rounded up to whole epochs of 500 steps
    assert driver.stage_config(driver.PLAN[3], 240).iterations == 7000
    assert driver.stage_config(driver.PLAN[5], 480).iterations == 13000
    short = SelfTrainingPlus(cfg.replace(iterations=20), dataset, tf.distribute.get_strategy(), verbose=0)
    assert short.stage_config(short.PLAN[5], 480).iterations == 86  # --iterations reaches the students too
    fixed = SelfTraining(cfg.replace(student_iterations=500), dataset, tf.distribute.get_strategy(), verbose=0)
    assert fixed.stage_config(fixed.PLAN[2], 480).iterations == 500


def test_stages_are_records_each_reading_earlier_stages():
    """The plans are data: stage kinds, their inputs (earlier stages only) and directory names."""
    from tfsemiseg.methods.st import Stage

    for driver in (SelfTraining, SelfTrainingPlus):
        names = [stage.name for stage in driver.PLAN]
        assert [stage.index for stage in driver.PLAN] == list(range(1, len(names) + 1))
        for position, stage in enumerate(driver.PLAN):
            assert all(name in names[:position] for name in stage.inputs)
        assert driver.PLAN[0].is_teacher and not any(s.is_teacher for s in driver.PLAN[1:])
        assert driver.PLAN[-1].kind == "train"
    assert [s.dirname for s in SelfTrainingPlus.PLAN] == ["1_teacher", "2_select", "3_label_reliable",
                                                          "4_student_reliable", "5_label_unreliable", "6_student"]
    assert SelfTrainingPlus.PLAN[5] == Stage(6, "student", "train", ("label_reliable", "label_unreliable"))


def test_stpp_needs_three_teacher_iterations(tmp_path):
    cfg = configs.get_config("stpp", "synthetic").replace(workdir=str(tmp_path), iterations=2, steps_per_epoch=1)
    with pytest.raises(ValueError, match="--iterations=2"):
        SelfTrainingPlus(cfg, build_dataset("synthetic"), tf.distribute.get_strategy(), verbose=0)


def test_st_needs_unlabeled_images(tmp_path):
    cfg = configs.get_config("st", "synthetic").replace(workdir=str(tmp_path), split="full")
    with pytest.raises(ValueError, match="split"):
        SelfTraining(cfg, build_dataset("synthetic", split="full"), tf.distribute.get_strategy())


TINY = dict(image_size=32, crop_size=32, batch_size=4, iterations=6, steps_per_epoch=2, student_iterations=4,
            eval_batch_size=64, tta_scales=(0.75, 1.5))


def tiny(method, workdir):
    return configs.get_config(method, "synthetic").replace(workdir=str(workdir), **TINY)


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_st_end_to_end_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    sets = [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--method=st",
                           "--dataset=synthetic", f"--workdir={run}", "--verbose=0", *sets],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 1_teacher: val mIoU" in proc.stdout and "stage 3_student: val mIoU" in proc.stdout
    cfg = tiny("st", run)
    assert runner.load_run(str(run))[0] == cfg
    metrics = json.load(open(run / "metrics.json"))
    assert set(metrics["stages"]) == {"1_teacher", "2_pseudo_label", "3_student"}
    assert 0.0 <= metrics["miou"] <= 1.0 and metrics["steps"] == 4  # the student's

    labels = run / "2_pseudo_label"
    dataset = runner.load_dataset(cfg)
    pseudo = sorted(p for p in os.listdir(labels) if p.endswith(".png"))
    assert len(pseudo) == len(dataset.unlabeled) == 480
    png = tf.io.decode_png(tf.io.read_file(str(labels / pseudo[0]))).numpy()
    assert png.shape == (32, 32, 1) and png.max() < dataset.num_classes
    # The pseudo-labels are the teacher's TTA predictions.
    teacher = keras.saving.load_model(run / "1_teacher" / "final" / "segmenter.keras")
    first_key, first_png = st.read_pseudo_labels(str(labels))[0]
    image = dataset.relabeled([first_key], [first_png])
    example = next(iter(image.examples("labeled")))
    scores = st.tta_scores(lambda x: st.padded_logits(teacher, x), tf.cast(example["image"][None], tf.float32),
                           cfg.tta_scales, cfg.tta_flip)
    agree = np.mean(np.argmax(scores[0], -1) == example["label"].numpy())
    assert agree > 0.99

    # Evaluate / export / predict find the student at the top of the run.
    assert runner.evaluate(str(run))["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    for event_dir in ("1_teacher/train", "2_pseudo_label/images", "3_student/train"):
        assert os.listdir(run / "logs" / event_dir), event_dir


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_stpp_resumes_after_an_interruption_and_skips_finished_stages(tmp_path, monkeypatch):
    cfg = tiny("stpp", tmp_path / "run")
    run = tmp_path / "run"
    written = []
    original_write = st._write_png

    def interrupt_midway(path, *args):
        if "5_label_unreliable" in str(path):
            if len(written) == 100:
                raise KeyboardInterrupt
            written.append(path)
        original_write(path, *args)

    monkeypatch.setattr(st, "_write_png", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        runner.train(cfg, verbose=0)
    for stage in ("1_teacher", "2_select", "3_label_reliable", "4_student_reliable"):
        assert os.path.exists(run / stage), stage
    assert not os.path.exists(run / "5_label_unreliable")  # never half-written
    assert not os.path.exists(run / "5_label_unreliable.tmp") and len(written) == 100  # its 100 PNGs removed
    assert not os.path.exists(run / "metrics.json")
    assert sorted(os.listdir(run / "1_teacher" / "snapshots")) == ["step_2.keras", "step_4.keras"]
    reliable = (run / "2_select" / "reliable.txt").read_text().split()
    unreliable = (run / "2_select" / "unreliable.txt").read_text().split()
    assert len(reliable) == len(unreliable) == 240 and not set(reliable) & set(unreliable)
    scores = [float(line.split()[0]) for line in (run / "2_select" / "scores.txt").read_text().splitlines()]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    finished = {stage: os.path.getmtime(run / stage) for stage in ("2_select", "3_label_reliable")}
    teacher_mtime = os.path.getmtime(run / "1_teacher" / "metrics.json")

    monkeypatch.setattr(st, "_write_png", original_write)
    trained = []
    monkeypatch.setattr(st.training, "fit_stage", _recording(st.training.fit_stage, trained))
    metrics = runner.train(cfg, verbose=0)
    assert [os.path.basename(args[4]) for args in trained] == ["6_student"]  # only the unfinished fit
    assert os.path.getmtime(run / "1_teacher" / "metrics.json") == teacher_mtime
    assert {stage: os.path.getmtime(run / stage) for stage in finished} == finished
    assert not os.path.exists(run / "5_label_unreliable.tmp")
    assert len([p for p in os.listdir(run / "5_label_unreliable") if p.endswith(".png")]) == 240
    assert list(metrics["stages"]) == ["1_teacher", "2_select", "3_label_reliable", "4_student_reliable",
                                       "5_label_unreliable", "6_student"]
    assert os.path.exists(run / "final" / "segmenter.keras")


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_stpp_takes_a_supervised_run_as_its_teacher_and_refuses_one_of_another_setting(tmp_path, monkeypatch):
    shared = {k: v for k, v in TINY.items() if k not in ("student_iterations", "tta_scales")}
    teacher_dir = tmp_path / "suponly"
    teacher = runner.train(configs.get_config("suponly", "synthetic").replace(workdir=str(teacher_dir), **shared),
                           verbose=0)
    assert sorted(os.listdir(teacher_dir / "snapshots")) == ["step_2.keras", "step_4.keras"]

    other = tiny("stpp", tmp_path / "other").replace(teacher=str(teacher_dir), seed=1)
    with pytest.raises(ValueError, match="teacher.*seed"):
        runner.train(other, verbose=0)

    trained = []
    monkeypatch.setattr(st.training, "fit_stage", _recording(st.training.fit_stage, trained))
    run = tmp_path / "stpp"
    metrics = runner.train(tiny("stpp", run).replace(teacher=str(teacher_dir)), verbose=0)
    assert [os.path.basename(args[4]) for args in trained] == ["4_student_reliable", "6_student"]
    assert not (run / "1_teacher").exists()
    assert metrics["stages"]["1_teacher"] == {"miou": teacher["miou"], "train_seconds": 0.0, "reused": True}
    assert "teacher" in json.load(open(run / "config.json"))
    # The reliable half was scored with the teacher's snapshots and labelled by the teacher.
    summary = json.load(open(run / "3_label_reliable" / "summary.json"))
    assert summary["model"] == str(teacher_dir)


def _recording(function, calls):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return wrapper


def test_paper_settings():
    voc = configs.get_config("stpp", "voc")
    assert (voc.arch, voc.backbone, voc.output_stride, voc.backbone_weights) == ("deeplabv3plus", "resnet101", 8,
                                                                                "imagenet")
    assert (voc.crop_size, voc.base_size, voc.scale_range, voc.batch_size) == (321, 400, (0.5, 2.0), 16)
    assert (voc.lr, voc.head_lr_mult, voc.weight_decay, voc.stage_epochs) == (0.001, 10.0, 1e-4, 80)
    assert not voc.freeze_bn and voc.tta_scales == (0.5, 0.75, 1.0, 1.5, 2.0) and voc.reliable_fraction == 0.5
    city = configs.get_config("st", "cityscapes")
    assert (city.crop_size, city.base_size, city.lr, city.stage_epochs, city.image_scale) == (721, 2048, 0.004, 240, 1.0)


@pytest.mark.slow
def test_stpp_killed_in_a_student_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL while the stage-4 student trains (after its first backup), rerun: same final weights."""
    import signal
    import time

    sets = [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in dict(TINY, student_iterations=6).items()]
    args = ["--method=stpp", "--dataset=synthetic", "--deterministic", "--seed=2", "--verbose=0", *sets]
    script = os.path.join(ROOT, "scripts", "train.py")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.run([sys.executable, script, f"--workdir={whole}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, script, f"--workdir={killed}", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metadata = killed / "4_student_reliable" / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    while not metadata.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "4_student_reliable" / "metrics.json").exists(), "killed too late"
    proc = subprocess.run([sys.executable, script, f"--workdir={killed}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    import tfsemiseg.models  # noqa: F401
    a, b = (keras.saving.load_model(str(d / "final" / "segmenter.keras")) for d in (whole, killed))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert (json.load(open(whole / "metrics.json"))["miou"] == json.load(open(killed / "metrics.json"))["miou"])

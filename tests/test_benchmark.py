"""benchmarks/semiseg_benchmark.py: runs seed by seed, records finished runs, skips them when run again."""

import json
import os

import pytest

from tests.conftest import benchmark_script

benchmark = benchmark_script("semiseg_benchmark")
speed = benchmark_script("benchmark")
quality = benchmark_script("pseudo_label_quality")


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_benchmark_runs_records_and_skips(camvid_tree, tmp_path, capsys):
    args = ["--methods=suponly", "--seeds=0,1", "--upper_bound_seeds=", f"--data_dir={camvid_tree}", "--split=1_4",
            f"--runs_dir={tmp_path / 'runs'}", f"--records={tmp_path / 'records'}", "--backbone=tiny",
            "--set", "iterations=2", "--set", "steps_per_epoch=2", "--set", "crop_size=16", "--set", "batch_size=2",
            "--set", "image_scale=1", "--precision=fp32"]
    assert benchmark.main(args) == 0
    records = sorted(os.listdir(tmp_path / "records"))
    assert records == ["results.md", "suponly_1_4_seed0.json", "suponly_1_4_seed1.json"]
    record = json.load(open(tmp_path / "records" / "suponly_1_4_seed1.json"))
    assert record["seed"] == 1 and record["metrics"]["steps"] == 2 and record["wall_seconds"] > 0
    assert "--seed=1" in record["command"] and "--backbone=tiny" in record["command"]
    assert "--mixed_precision" not in record["command"]
    assert not [w for w in record["command"].split() if w.split("=")[-1].startswith("/")]  # no machine paths
    assert "--workdir=RUNS/suponly_1_4_seed1" in record["command"]
    table = open(tmp_path / "records" / "results.md").read()
    assert "| suponly | 1_4 | **" in table and "| 0,1 |" in table and "+-" in table and "sky" in table
    assert (tmp_path / "records.png").stat().st_size > 1000  # the figure, one dot per seed

    capsys.readouterr()
    assert benchmark.main(args) == 0  # everything recorded: nothing runs again
    assert "2 runs finished, 0 to do" in capsys.readouterr().out


def test_an_attempt_counts_while_it_runs(tmp_path, monkeypatch):
    """<run>.attempts.json is brought up to date while the run goes: an attempt whose benchmark process
    is killed (the machine stopping) keeps its time, and the next attempt adds to it."""
    import sys
    import threading
    import time

    release = tmp_path / "release"
    train = ("import json, os, sys, time\n"
             f"while not os.path.exists({str(release)!r}): time.sleep(0.01)\n"
             "json.dump({'miou': 0.5}, open(os.path.join(sys.argv[1], 'metrics.json'), 'w'))\n")
    monkeypatch.setattr(benchmark, "command", lambda args, method, split, seed, workdir, extra:
                        [sys.executable, "-c", train, workdir])
    monkeypatch.setattr(benchmark, "HEARTBEAT_SECONDS", 0.05, raising=False)
    args = benchmark.parse_args([f"--runs_dir={tmp_path / 'runs'}", f"--records={tmp_path / 'records'}"])
    run = tmp_path / "runs" / "suponly_1_8_seed0"
    run.mkdir(parents=True)
    (run / "benchmark.json").write_text(json.dumps([{"seconds": 100.0, "exit": None}]))  # a killed attempt,
    attempts_file = tmp_path / "runs" / "suponly_1_8_seed0.attempts.json"  # kept inside the run by earlier versions
    codes = []
    worker = threading.Thread(target=lambda: codes.append(benchmark.execute(args, "suponly", "suponly", "1_8", 0, [])))
    worker.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            attempts = json.loads(attempts_file.read_text()) if attempts_file.exists() else []
            if len(attempts) == 2 and attempts[1]["seconds"] > 0:
                break
            time.sleep(0.02)
        assert attempts[1]["exit"] is None and attempts[1]["seconds"] > 0  # written while the run goes
    finally:
        release.write_text("")
        worker.join(30)
    assert codes == [0]
    attempts = json.loads(attempts_file.read_text())
    assert not (run / "benchmark.json").exists()
    assert attempts[1]["exit"] == 0
    record = json.load(open(tmp_path / "records" / "suponly_1_8_seed0.json"))
    assert record["attempts"] == 2 and record["wall_seconds"] == round(100.0 + attempts[1]["seconds"], 1)


def test_every_registered_method_runs_and_self_training_reuses_the_seeds_supervised_run(tmp_path):
    from tfsemiseg.methods import METHODS

    args = benchmark.parse_args(["--dataset=synthetic", f"--runs_dir={tmp_path}"])
    assert args.split == "1_16" and args.methods[0] == "suponly" and sorted(args.methods) == sorted(METHODS)
    for method in ("st", "stpp"):
        cmd = benchmark.command(args, method, "1_16", 2, str(tmp_path / f"{method}_1_16_seed2"), [])
        assert cmd[-2:] == ["--set", f"teacher={tmp_path / 'suponly_1_16_seed2'}"]
        assert "--dataset=synthetic" in cmd and not any(c.startswith("--data_dir") for c in cmd)
        assert "RUNS/suponly_1_16_seed2" in benchmark.portable(cmd, args)
    assert not any("teacher" in c for c in benchmark.command(args, "alss", "1_16", 2, str(tmp_path), []))
    assert "--mixed_precision" not in cmd  # the synthetic set in float32
    camvid = benchmark.parse_args(["--dataset=camvid"])
    assert camvid.split == "1_16" and "--mixed_precision" in benchmark.command(camvid, "alss", "1_16", 0, "w", [])


def test_bfloat16_is_refused_on_a_cpu_that_emulates_it(tmp_path, monkeypatch, capsys):
    from tfsemiseg import training

    (tmp_path / "avx2").write_text("processor: 0\nflags\t\t: fpu sse avx2 fma\n")
    (tmp_path / "bf16").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert training.native_bfloat16(str(tmp_path / "avx2")) is False
    assert training.native_bfloat16(str(tmp_path / "bf16")) is True
    assert training.native_bfloat16(str(tmp_path / "missing")) is None
    monkeypatch.setattr(training, "native_bfloat16", lambda: False)
    code = benchmark.main(["--dataset=synthetic", "--precision=bf16", "--methods=suponly", "--upper_bound_seeds=",
                           f"--runs_dir={tmp_path / 'runs'}", f"--records={tmp_path / 'records'}"])
    assert code == 2 and "--precision=fp32" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _record(args, label, split, seed, miou, command=""):
    benchmark._write_json(benchmark.record_path(args, label, split, seed), {
        "label": label, "split": split, "seed": seed, "command": command, "wall_seconds": 60.0, "attempts": 1,
        "metrics": {"miou": miou, "per_class_iou": {"a": miou}}})


def test_summary_table_compares_with_suponly_on_the_same_seeds_and_the_full_label_runs(tmp_path):
    """A seed fixes the labeled images, so a method is compared with SupOnly on the seeds it ran: SupOnly's
    seed 2 (50) would make ALSS's gain +7 against the mean of all of SupOnly's seeds, not +10."""
    args = benchmark.parse_args(["--dataset=synthetic", "--methods=suponly,alss", "--seeds=0,1",
                                 "--upper_bound_seeds=0", f"--records={tmp_path}"])
    for label, split, seed, miou in (("suponly", "1_16", 0, 0.40), ("suponly", "1_16", 1, 0.42),
                                     ("suponly", "1_16", 2, 0.50), ("alss", "1_16", 0, 0.50),
                                     ("alss", "1_16", 1, 0.52), ("suponly", "full", 0, 0.61)):
        _record(args, label, split, seed, miou)
    table = benchmark.tables(args)
    assert "| alss | 1_16 | **51.00 +- 1.41** | 0,1 | +10.00 +- 0.00 | 50 % | 1.0 min |" in table
    assert "| suponly | full | **61.00 +- -** | 0 |" in table


def test_tables_hold_every_record_whichever_command_wrote_it(tmp_path):
    """A run of one variant or one seed rewrites results.md without dropping the other records, and
    lists each variant with the settings its command added."""
    args = benchmark.parse_args(["--dataset=synthetic", "--methods=", "--seeds=1", "--upper_bound_seeds=",
                                 f"--records={tmp_path}", "--variant=unimatch_tau_0=unimatch --set tau=0"])
    _record(args, "unimatch", "1_16", 0, 0.45)
    _record(args, "suponly", "1_16", 0, 0.40)
    _record(args, "suponly", "1_16", 1, 0.40)
    _record(args, "unimatch_tau_0", "1_16", 1, 0.47, "scripts/train.py --method=unimatch --dataset=synthetic "
            "--split=1_16 --seed=1 --workdir=RUNS/unimatch_tau_0_1_16_seed1 --verbose=2 --set tau=0")
    _record(args, "st", "1_16", 0, 0.44, "scripts/train.py --method=st --workdir=RUNS/st --verbose=2 "
            "--set teacher=RUNS/suponly_1_16_seed0")
    _record(args, "suponly_it12000", "1_16", 0, 0.43, "scripts/train.py --method=suponly --set iterations=12000")
    _record(args, "suponly_it3000", "1_16", 0, 0.41, "scripts/train.py --method=suponly --set iterations=3000")
    table = benchmark.tables(args)
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "**" in line]
    assert rows == ["| suponly", "| unimatch", "| st", "| suponly_it3000", "| suponly_it12000", "| unimatch_tau_0"]
    assert "| unimatch_tau_0 | `--set tau=0` | 1_16 | **47.00 +- -** | 1 | +7.00 |" in table
    assert "teacher" not in table  # ST's teacher is the seed's SupOnly run, not a setting of its own


def test_self_training_alone_still_takes_the_seeds_supervised_run_as_teacher(tmp_path):
    # `--methods=stpp` (no SupOnly named) used to train ST++'s own teacher: its seed then compared
    # with a SupOnly run that was not its teacher.
    args = benchmark.parse_args(["--dataset=synthetic", "--methods=stpp", "--seeds=2", "--upper_bound_seeds=",
                                 f"--runs_dir={tmp_path}", "--variant=st_x=st --set tau=1"])
    assert [(label, seed) for label, _, _, seed, _ in benchmark.plan(args)] == [
        ("suponly", 2), ("stpp", 2), ("st_x", 2)]
    cmd = benchmark.command(args, "stpp", "1_16", 2, str(tmp_path / "stpp_1_16_seed2"), [])
    assert cmd[-2:] == ["--set", f"teacher={tmp_path / 'suponly_1_16_seed2'}"]
    alone = benchmark.parse_args(["--dataset=synthetic", "--methods=st", "--seeds=0", "--upper_bound_seeds=",
                                  "--no_reuse_teacher"])
    assert [label for label, *_ in benchmark.plan(alone)] == ["st"]
    assert not any("teacher" in c for c in benchmark.command(alone, "st", "1_16", 0, "w", []))


def test_a_teacher_recorded_but_not_on_this_machine_trains_again_before_its_students(tmp_path, capsys):
    """On a fresh clone the SupOnly record is committed but its run folder, which ST reads, is not."""
    records, runs = tmp_path / "records", tmp_path / "runs"
    argv = ["--dataset=synthetic", "--methods=st", "--seeds=0", "--upper_bound_seeds=", f"--records={records}",
            f"--runs_dir={runs}", "--dry_run"]
    args = benchmark.parse_args(argv)
    _record(args, "suponly", "1_16", 0, 0.40)
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 runs finished, 2 to do" in out
    assert out.index("--method=suponly") < out.index("--method=st")
    (runs / "suponly_1_16_seed0").mkdir(parents=True)
    (runs / "suponly_1_16_seed0" / "metrics.json").write_text("{}")
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 runs finished, 1 to do" in out and "--method=suponly" not in out


def test_table_only_plans_no_teacher_retraining(tmp_path, capsys):
    """--table_only trains nothing, so it does not announce that a teacher trains again."""
    records, runs = tmp_path / "records", tmp_path / "runs"
    argv = ["--dataset=synthetic", "--methods=st", "--seeds=0", "--upper_bound_seeds=", f"--records={records}",
            f"--runs_dir={runs}", "--table_only"]
    _record(benchmark.parse_args(argv), "suponly", "1_16", 0, 0.40)
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "trains again" not in out and "1 runs finished, 1 to do" in out
    assert (records / "results.md").exists() and not runs.exists()


def test_dry_run_estimates_each_run_from_its_methods_records(tmp_path, capsys):
    """Each run to do is listed with its method's mean recorded wall time on that split, and the total."""
    records = tmp_path / "records"
    argv = ["--dataset=synthetic", "--methods=suponly,alss", "--seeds=0,1", "--upper_bound_seeds=1",
            f"--records={records}", f"--runs_dir={tmp_path / 'runs'}", "--dry_run"]
    args = benchmark.parse_args(argv)
    _record(args, "suponly", "1_16", 0, 0.40)   # 60 s
    _record(args, "suponly", "full", 0, 0.60)   # 60 s
    _record(args, "alss", "1_16", 0, 0.45)
    record = json.load(open(benchmark.record_path(args, "alss", "1_16", 0)))
    benchmark._write_json(benchmark.record_path(args, "alss", "1_16", 0), dict(record, wall_seconds=3 * 3600.0))
    assert benchmark.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    todo = [line for line in lines if line.startswith("  [")]
    assert [line.split("]")[0] for line in todo] == ["  [~1 min", "  [~1 min", "  [~180 min"]
    assert "--split=full" in todo[0] and "--method=alss" in todo[2]
    assert lines[-1].startswith("~3.0 h for the 3 runs whose method has a record here")
    argv[2] = "--methods=st"
    assert benchmark.main(argv) == 0
    assert "  [no record yet]" in capsys.readouterr().out


def test_students_of_a_teacher_that_failed_are_skipped_not_run_on_a_missing_teacher(tmp_path, monkeypatch,
                                                                                      capsys):
    calls = []
    monkeypatch.setattr(benchmark, "execute", lambda args, label, *rest: calls.append(label) or 1)
    argv = ["--dataset=synthetic", "--methods=st,stpp", "--seeds=0", "--upper_bound_seeds=",
            f"--records={tmp_path / 'records'}", f"--runs_dir={tmp_path / 'runs'}"]
    assert benchmark.main(argv) == 1
    assert calls == ["suponly"]
    out = capsys.readouterr().out
    assert "st seed 0: skipped, its teacher (SupOnly seed 0) failed" in out
    assert "stpp seed 0: skipped" in out


def test_plan_order_seed_by_seed_then_upper_bound_then_variants():
    args = benchmark.parse_args(["--methods=suponly,alss", "--seeds=0,1", "--upper_bound_seeds=0",
                                 "--variant=alss_slow_d=alss --set d_lr=1e-5"])
    order = [(label, split, seed) for label, _, split, seed, _ in benchmark.plan(args)]
    assert order == [("suponly", "1_16", 0), ("alss", "1_16", 0), ("suponly", "full", 0), ("suponly", "1_16", 1),
                     ("alss", "1_16", 1), ("alss_slow_d", "1_16", 0), ("alss_slow_d", "1_16", 1)]
    assert benchmark.plan(args)[-1][4] == ["--set", "d_lr=1e-5"]


@pytest.mark.slow  # suite budget: end to end, covered by the README command and -m slow
def test_speed_benchmark_times_the_real_train_step_and_the_pipeline(capsys, tmp_path):
    assert speed.main(["--method=pseudoseg", "--arch=deeplabv3plus", "--backbone=tiny", "--crop=33", "--batch=2",
                       "--classes=11", "--steps=2", "--repeats=2", "--pipeline_batches=2",
                       f"--profile={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s float32" in out and "train step s/iter: " in out and "segmenter images/s" in out
    assert "peak RSS" in out and "x what the step consumes" in out and "cores busy" in out
    assert "s after its last step" in out
    assert "resident memory (MiB): imported " in out and "after 2 steps" in out
    assert out.count("(file-backed ") == 4  # imported, model built, after 2 steps; at the peak
    # The profile names the op types; batch norm runs as TensorFlow's fused op.
    assert "ops' summed wall time" in out and "FusedBatchNorm" in out
    assert list(tmp_path.glob("**/*.xplane.pb"))
    times = [float(t) for t in out.split("train step s/iter: ")[1].splitlines()[0].split(", ")]
    assert len(times) == 2 and all(t > 0 for t in times)


def test_speed_benchmark_aspp_rates():
    v3 = ["--arch=deeplabv3plus", "--backbone=tiny"]
    assert speed.benchmark_config(speed.parse_args(v3)).aspp_rates == (12, 24, 36)  # DeepLab's, OS 8
    assert speed.benchmark_config(speed.parse_args(v3 + ["--output_stride=16"])).aspp_rates == (6, 12, 18)
    assert speed.benchmark_config(speed.parse_args(v3 + ["--aspp_rates=1,2,3"])).aspp_rates == (1, 2, 3)


def test_speed_benchmark_stream_does_not_autotune():
    """With autotuning, each timed `fit` waited for the tf.data autotuner's next wake-up (timings
    quantized to about 2 s); the in-memory stream has nothing to tune."""
    stream = speed.in_memory_stream({"image": [[1.0]]})
    assert stream.options().autotune.enabled is False
    assert [float(b["image"][0][0]) for b in stream.take(2)] == [1.0, 1.0]


@pytest.mark.slow  # suite budget
def test_speed_benchmark_runs_the_reference_in_each_setting_and_prints_both_ratios(capsys, tmp_path):
    """The reference runs in its own interpreter (here a stand-in script printing what
    ../shared/bench/torch_alss_step.py prints, faster with --bf16 and --channels_last), once per
    setting; the ratios compare with the same precision and with PyTorch's best setting."""
    import sys

    fake = tmp_path / "reference.py"
    fake.write_text("import sys\nassert sys.argv[1:5] == ['--crop', '33', '--batch', '2']\n"
                    "s = 4.0 / (2 if '--bf16' in sys.argv else 1) / (1.25 if '--channels_last' in sys.argv else 1)\n"
                    "print('torch 0 threads=2')\nprint(f'step_s={s:.3f} seg_images_per_s=1.0 gflop_per_step=2.0 "
                    "achieved_gflops=0.5')\n")
    assert speed.main(["--method=alss", "--arch=deeplabv2", "--backbone=tiny", "--crop=33", "--batch=2",
                       "--steps=1", "--repeats=1", "--pipeline=", f"--torch_python={sys.executable}",
                       f"--torch_script={fake}"]) == 0
    out = capsys.readouterr().out
    median = float(out.split("median ")[1].split(" s/iter")[0])
    for setting, seconds in (("fp32", "4.000"), ("channels_last", "3.200"), ("bf16", "2.000"),
                             ("bf16+channels_last", "1.600")):
        line = out.split(f"PyTorch {setting}:")[1].splitlines()[0]
        assert f"step_s={seconds}" in line and "peak RSS" in line and "(file-backed " in line
    same = float(out.split("PyTorch same precision (channels_last): ")[1].split()[0])
    assert abs(same - median / 3.2) <= 0.006  # float32 against PyTorch's faster float32 layout
    best = float(out.split("PyTorch's best (bf16+channels_last, 1.600 s): ")[1].split(";")[0])
    assert abs(best - median / 1.6) <= 0.006  # the median is printed rounded to 1 ms
    achieved = float(out.split("tfsemiseg arithmetic: ")[1].split(" GFLOP/s")[0])
    assert abs(achieved - 2.0 / median) <= 1 and "of the float32 dense matmul" in out  # median printed rounded


def test_student_fit_measures_each_stage_on_what_it_trained_on(camvid_tree, tmp_path):
    """pseudo_label_quality.py --students: a student whose pseudo-labels are its own predictions fits
    them exactly; every view counts the pixels of the images the stage trained on."""
    import types

    import numpy as np
    import tensorflow as tf

    from tfsemiseg.data import build_dataset, io
    from tfsemiseg.inference import predict_logits
    from tfsemiseg.methods import st
    from tfsemiseg.models.segmenters import build_segmenter

    dataset = build_dataset("camvid", camvid_tree, "1_4")
    segmenter = build_segmenter("deeplabv2", "tiny", 11)
    run = tmp_path / "run"
    for stage in ("1_teacher", "3_student"):
        os.makedirs(run / stage / "final")
        segmenter.save(run / stage / "final" / "segmenter.keras")
    labels = run / "2_pseudo_label"
    os.makedirs(labels)
    names = []
    for image_path, _ in dataset.unlabeled:
        names.append(os.path.basename(image_path))
        own = tf.argmax(predict_logits(segmenter, io.read_image(image_path)[None]), -1)[0]
        tf.io.write_file(str(labels / names[-1]), tf.io.encode_png(tf.cast(own[..., None], tf.uint8)))
    st._write_keys(labels / "keys.txt", dataset.unlabeled)
    (labels / "labels.txt").write_text("\n".join(names) + "\n")

    results = quality.student_fit(str(run), types.SimpleNamespace(image_scale=1.0, method="st"), dataset)  # all it reads
    assert list(results) == ["1_teacher", "3_student"]
    assert list(results["1_teacher"]) == ["labeled vs truth"]
    views = results["3_student"]
    assert float(views["fit to pseudo-labels"].result()) == 1.0
    pixels = {name: float(np.sum(miou.total_cm)) for name, miou in views.items()}
    assert pixels["fit to pseudo-labels"] == 6 * 24 * 32  # six unlabeled images of 24 x 32
    assert pixels["unlabeled vs truth"] < pixels["fit to pseudo-labels"]  # void (11) pixels are not counted
    assert 0 < pixels["labeled vs truth"] <= 2 * 24 * 32


def test_stage_quality_on_a_list_counts_only_its_images(camvid_tree, tmp_path):
    """pseudo_label_quality.py --images: the stage's pseudo-labels scored on the listed images only
    (here the right ones, 1.0), the list read as split files and ST++'s selection write it."""
    import numpy as np
    import tensorflow as tf

    from tfsemiseg.data import build_dataset, io
    from tfsemiseg.methods import st

    dataset = build_dataset("camvid", camvid_tree, "1_4")
    stage = tmp_path / "2_pseudo_label"
    os.makedirs(stage)
    names = []
    for i, (image_path, label_path) in enumerate(dataset.unlabeled):
        truth = io.read_label(label_path, 11, 11).numpy()
        pseudo = np.where(truth == 11, 0, truth) if i < 2 else (truth + 1) % 11  # right on the first two only
        names.append(os.path.basename(image_path))
        tf.io.write_file(str(stage / names[-1]), tf.io.encode_png(pseudo[..., None].astype(np.uint8)))
    st._write_keys(stage / "keys.txt", dataset.unlabeled)
    (stage / "labels.txt").write_text("\n".join(names) + "\n")
    listed = tmp_path / "reliable.txt"
    listed.write_text("".join(f"{image}\t{label}\n" for image, label in dataset.unlabeled[:2]))

    count, miou, _ = quality.stage_quality([str(stage)], dataset, quality.read_image_list(str(listed)))
    assert (count, miou) == (2, 1.0)
    count, miou, _ = quality.stage_quality([str(stage)], dataset)
    assert count == len(dataset.unlabeled) == 6 and miou < 0.5


def test_speed_benchmark_camvid_setting_is_the_camvid_step():
    args = speed.parse_args(["--setting=camvid", "--method=suponly"])
    cfg = speed.benchmark_config(args)
    assert (args.arch, args.backbone, args.output_stride, args.crop, args.batch, args.classes) == (
        "deeplabv3plus", "efficientnet_lite0", 16, 224, 8, 11)
    assert (cfg.crop_size, cfg.batch_size, cfg.head_channels, cfg.aspp_rates) == (224, 8, 128, (6, 12, 18))
    args = speed.parse_args(["--setting=camvid", "--crop=96"])  # a flag given wins over the setting
    assert args.crop == 96 and args.batch == 8
    default = speed.parse_args([])
    assert (default.arch, default.backbone, default.crop, default.batch, default.classes) == (
        "deeplabv2", "resnet101", 161, 2, 21)


def test_speed_benchmark_counts_the_images_the_segmenter_sees():
    import tensorflow as tf

    def spec(n):
        return tf.TensorSpec([n, 8, 8, 3])
    assert speed.segmenter_images(spec(4)) == 4
    assert speed.segmenter_images({"labeled": {"image": spec(2), "label": spec(2)},
                                   "unlabeled": {"image": spec(2), "valid": spec(2), "image_strong_1": spec(2),
                                                 "image_strong_2": spec(2)},
                                   "real": {"image": spec(2), "label": spec(2)}}) == 8


def test_recalibrated_bn_reestimates_only_the_batchnorm_statistics(monkeypatch):
    """pseudo_label_quality.py --recalibrate_bn: the moving statistics move to the weak crops' batch
    statistics; the trained weights stay; the first mIoU is the run's own."""
    import keras
    import numpy as np

    import configs
    from tfsemiseg import runner
    from tfsemiseg.models.segmenters import build_from_config

    cfg = configs.get_config("suponly", "synthetic").replace(image_size=32, crop_size=32, batch_size=4)
    dataset = runner.load_dataset(cfg)
    segmenter = build_from_config(cfg, dataset.num_classes)
    bns = [layer for layer in segmenter._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 1e4, np.float32))
    trained = [w.numpy().copy() for w in segmenter.trainable_weights]
    monkeypatch.setattr(quality.runner, "load_run", lambda run_dir: (cfg, segmenter))

    before, after = quality.recalibrated_bn("run", cfg, dataset, batches=3)
    # 0.9 ** 3 of the old variance is left at most, plus the crops' own (far below 1e4 on the first layer).
    assert float(np.max(bns[0].moving_variance.numpy())) < 0.75e4
    assert all(np.array_equal(w.numpy(), t) for w, t in zip(segmenter.trainable_weights, trained))
    assert 0 <= before <= 1 and 0 <= after <= 1


def test_an_unknown_method_is_refused_by_name_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark.subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    for flag in ("--methods=suponly,st_plusplus", "--variant=fast=st_plusplus --set lr=1"):
        with pytest.raises(SystemExit) as exit_:
            benchmark.main(["--dataset=synthetic", flag, "--seeds=0", f"--runs_dir={tmp_path / 'runs'}",
                            f"--records={tmp_path / 'records'}"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "no method 'st_plusplus'" in err and "stpp" in err and flag.split("=")[0] in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()


def test_a_retrained_teacher_keeps_the_earlier_run_of_its_seed_in_its_record(tmp_path, monkeypatch):
    """A teacher trained again on a fresh machine replaces its seed's record; the earlier run's result stays
    in it (and in the per-run table), and writing the same run's record again adds nothing."""
    import sys

    args = benchmark.parse_args(["--dataset=synthetic", f"--runs_dir={tmp_path / 'runs'}",
                                 f"--records={tmp_path / 'records'}"])
    _record(args, "suponly", "1_16", 2, 0.5488, "scripts/train.py --method=suponly --seed=2")
    run = tmp_path / "runs" / "suponly_1_16_seed2"
    mious = [0.5329, 0.5329, 0.5401]  # one a call of execute(); the second finds its run finished
    monkeypatch.setattr(benchmark, "command", lambda args, method, split, seed, workdir, extra: [
        sys.executable, "-c", "import json, sys; json.dump({'miou': float(sys.argv[2]), 'per_class_iou': {}}, "
        "open(sys.argv[1] + '/metrics.json', 'w'))", workdir, str(mious.pop(0))])
    assert benchmark.execute(args, "suponly", "suponly", "1_16", 2, []) == 0
    path = benchmark.record_path(args, "suponly", "1_16", 2)
    record = json.load(open(path))
    assert record["metrics"]["miou"] == 0.5329
    assert record["earlier_runs"] == [{"miou": 0.5488, "wall_seconds": 60.0,
                                       "command": "scripts/train.py --method=suponly --seed=2"}]
    assert benchmark.execute(args, "suponly", "suponly", "1_16", 2, []) == 0  # the finished run, recorded again
    assert json.load(open(path))["earlier_runs"] == record["earlier_runs"]
    (run / "metrics.json").unlink()
    assert benchmark.execute(args, "suponly", "suponly", "1_16", 2, []) == 0  # a third run
    assert [r["miou"] for r in json.load(open(path))["earlier_runs"]] == [0.5488, 0.5329]
    table = benchmark.tables(args)
    assert "| suponly | 2 | - | 54.01 (earlier runs of this seed: 54.88, 53.29) |" in table
    assert "| suponly | 1_16 | **54.01 +- -** | 2 |" in table  # the row is the run on disk, the students' teacher

"""One markdown row per finished run: method, seed, each stage's val mIoU, final mIoU, time;
then the mean and standard deviation of each method's final mIoU over its runs, and of the
supervised recipe (SupOnly runs together with the ST / ST++ teachers, which train the same way).

    python benchmarks/summarize_runs.py runs/*_camvid_1_8*
"""

import collections
import json
import os
import sys

import numpy as np


def row(run_dir):
    config = json.load(open(os.path.join(run_dir, "config.json")))
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    stages = metrics.get("stages", {})
    trained = [f"{name.split('_', 1)[0]}: {100 * s['miou']:.2f}" for name, s in stages.items() if "miou" in s]
    seconds = metrics.get("total_seconds", metrics.get("train_seconds"))
    return (f"| {config['method']} | {config['seed']} | {', '.join(trained) or '-'} | **{100 * metrics['miou']:.2f}** "
            f"| {seconds:.0f} s | {os.path.basename(run_dir.rstrip('/'))} |")


def stats(run_dirs):
    groups = collections.defaultdict(list)
    per_class = collections.defaultdict(list)
    for run_dir in run_dirs:
        metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
        method = json.load(open(os.path.join(run_dir, "config.json")))["method"]
        groups[method].append(metrics["miou"])
        per_class[method].append(list(metrics["per_class_iou"].values()))
        classes = list(metrics["per_class_iou"])
        for name, stage in metrics.get("stages", {}).items():
            if "miou" in stage and name != list(metrics["stages"])[-1]:
                groups[f"{method} stage {name}"].append(stage["miou"])
        teacher = metrics.get("stages", {}).get("1_teacher")
        recipe = "supervised recipe (suponly + teachers)"
        groups[recipe].append(teacher["miou"] if teacher else metrics["miou"])
        if teacher:
            teacher_metrics = json.load(open(os.path.join(run_dir, "1_teacher", "metrics.json")))
            per_class[recipe].append(list(teacher_metrics["per_class_iou"].values()))
        else:
            per_class[recipe].append(list(metrics["per_class_iou"].values()))
    print("\n| group | runs | mean val mIoU | std |\n|---|---|---|---|")
    for name, values in sorted(groups.items()):
        std = 100 * np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(f"| {name} | {len(values)} | {100 * np.mean(values):.2f} | {std:.2f} |")
    print(f"\nMean per-class IoU\n\n| group | {' | '.join(classes)} |\n|---|{'---|' * len(classes)}")
    for name, rows in sorted(per_class.items()):
        values = np.array([[np.nan if v is None else v for v in r] for r in rows], np.float64)
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in np.nanmean(values, 0)) + " |")


if __name__ == "__main__":
    finished = [d for d in sys.argv[1:] if os.path.isfile(os.path.join(d, "metrics.json"))]
    print("| method | seed | stages (val mIoU) | final val mIoU | time (fits + inference) | run |")
    print("|---|---|---|---|---|---|")
    for run_dir in finished:
        print(row(run_dir))
    stats(finished)

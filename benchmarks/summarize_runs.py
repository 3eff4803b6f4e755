"""One markdown row per finished run: method, seed, each stage's val mIoU, final mIoU, time.

    python benchmarks/summarize_runs.py /work/runs/*_camvid_1_8*
"""

import json
import os
import sys


def row(run_dir):
    config = json.load(open(os.path.join(run_dir, "config.json")))
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    stages = metrics.get("stages", {})
    trained = [f"{name.split('_', 1)[0]}: {100 * s['miou']:.2f}" for name, s in stages.items() if "miou" in s]
    seconds = metrics.get("total_seconds", metrics.get("train_seconds"))
    return (f"| {config['method']} | {config['seed']} | {', '.join(trained) or '-'} | **{100 * metrics['miou']:.2f}** "
            f"| {seconds:.0f} s | {os.path.basename(run_dir.rstrip('/'))} |")


if __name__ == "__main__":
    print("| method | seed | stages (val mIoU) | final val mIoU | time (fits + inference) | run |")
    print("|---|---|---|---|---|---|")
    for run_dir in sys.argv[1:]:
        if os.path.isfile(os.path.join(run_dir, "metrics.json")):
            print(row(run_dir))

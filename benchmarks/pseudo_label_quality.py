"""How good are a run's pseudo-labels? mIoU of each ST / ST++ labelling stage against the ground truth.

Only for datasets whose unlabeled images do have labels on disk (e.g. CamVid's train split, where
the semi-supervised split hides them): the training never reads them, this script does.

    python benchmarks/pseudo_label_quality.py /work/runs/stpp_camvid_1_8 [more run dirs]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfsemiseg import metrics, runner  # noqa: E402
from tfsemiseg.data import io  # noqa: E402
from tfsemiseg.methods.st import _read_keys  # noqa: E402


def stage_quality(stage_dirs, dataset):
    """(images, mIoU, per-class IoU) of the pseudo-labels of `stage_dirs` taken together."""
    pairs = []
    for stage_dir in stage_dirs:
        keys = _read_keys(os.path.join(stage_dir, "keys.txt"))
        names = open(os.path.join(stage_dir, "labels.txt")).read().split()
        pairs += [(key, os.path.join(stage_dir, name)) for key, name in zip(keys, names)]
    miou = metrics.MeanIoU(dataset.num_classes)
    for (_, truth_path), pseudo_path in pairs:
        truth = io.read_label(truth_path, dataset.num_classes, dataset.ignore_value)
        pseudo = io.read_label(pseudo_path, dataset.num_classes)
        miou.update_state(truth[None], tf.one_hot(tf.cast(pseudo, tf.int32), dataset.num_classes)[None])
    per_class = miou.per_class_iou()
    return len(pairs), float(miou.result()), per_class


def main(run_dirs):
    for run_dir in run_dirs:
        cfg, _ = runner.load_run(run_dir)
        dataset = runner.load_dataset(cfg)
        print(f"{run_dir}  ({cfg.method}, {cfg.dataset} {cfg.split})")
        print("  stage                 images  pseudo-label mIoU  per class")
        stages = [s for s in sorted(os.listdir(run_dir)) if os.path.isfile(os.path.join(run_dir, s, "labels.txt"))]
        rows = [(stage, [stage]) for stage in stages] + ([("all together", stages)] if len(stages) > 1 else [])
        for name, group in rows:
            count, value, per_class = stage_quality([os.path.join(run_dir, s) for s in group], dataset)
            classes = " ".join("-" if np.isnan(v) else f"{100 * v:.0f}" for v in per_class)
            print(f"  {name:20s}  {count:6d}  {100 * value:17.2f}  {classes}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Evaluate the final model of a run: mIoU and per-class IoU, written to <workdir>/metrics_<split>.json.

    python scripts/evaluate.py --workdir=runs/suponly_synthetic_1_16
    python scripts/evaluate.py --workdir=runs/alss_camvid_1_8 --data_dir=../shared/data/camvid --eval_split=val
"""

import sys

import _bootstrap  # noqa: F401
from absl import app, flags

from tfsemiseg import runner
from tfsemiseg.data import DataError
from tfsemiseg.files import error_message

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "directory of a finished train.py run", required=True)
flags.DEFINE_string("data_dir", None, "dataset root, if it moved since training")
flags.DEFINE_string("eval_split", None, "split to evaluate (default: the run's eval_split)")


def main(argv):
    del argv
    try:
        metrics = runner.evaluate(FLAGS.workdir, FLAGS.data_dir, FLAGS.eval_split)
    except (DataError, OSError, ValueError) as err:
        sys.exit(f"error: {error_message(err)}")
    for name, iou in metrics["per_class_iou"].items():
        print(f"  {name:>14s}: {'-' if iou is None else f'{100 * iou:.1f}'}")
    print(f"{metrics['eval_split']} mIoU: {100 * metrics['miou']:.2f}  "
          f"(written to {FLAGS.workdir}/metrics_{metrics['eval_split']}.json)")


if __name__ == "__main__":
    app.run(main)

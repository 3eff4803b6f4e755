"""Predict label maps for image files with the final model of a run.

    python scripts/predict.py --workdir=runs/suponly_camvid_1_8 --output_dir=preds ../shared/data/camvid/val/*.png
    python scripts/predict.py --workdir=runs/suponly_camvid_1_8 --output_dir=preds ../shared/data/camvid/val

Writes `<output_dir>/<image name>.png` at each image's size, with the run's preprocessing (the
same labels as the exported SavedModel). An unreadable image is named and skipped; the exit
status is then 1.
"""

import sys

import _bootstrap  # noqa: F401
from absl import app, flags

from tfsemiseg import export, runner
from tfsemiseg.files import error_message

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "directory of a finished train.py run", required=True)
flags.DEFINE_string("output_dir", "predictions", "where to write <image name>.png")
flags.DEFINE_bool("colour", True, "write VOC-palette colours (else raw class indices)")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("Give one or more image files.")
    try:
        cfg, segmenter = runner.load_run(FLAGS.workdir)
        written, failed = export.predict_files(segmenter, export.image_files(argv[1:]), FLAGS.output_dir,
                                               FLAGS.colour, cfg.image_scale)
    except (FileNotFoundError, OSError, ValueError, export.ExportError) as err:
        sys.exit(f"error: {error_message(err)}")
    print(f"{len(written)} prediction(s) written to {FLAGS.output_dir}")
    for path, reason in failed:
        print(f"error: cannot read {path} ({reason}); skipped", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)

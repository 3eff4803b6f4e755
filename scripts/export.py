"""Export the final model of a run as a SavedModel for TF Serving.

    python scripts/export.py --workdir=runs/suponly_camvid_1_8 --output=exported/camvid/1
    docker run -p 8501:8501 -v "$PWD/exported/camvid:/models/camvid" -e MODEL_NAME=camvid tensorflow/serving

The run's preprocessing (image_scale, padding) is inside the SavedModel; see README "Serving".
"""

import os
import sys

import _bootstrap  # noqa: F401
from absl import app, flags

from tfsemiseg import export, runner
from tfsemiseg.files import error_message

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "directory of a finished train.py run", required=True)
flags.DEFINE_string("output", None, "SavedModel directory, a version folder (default: <workdir>/export/1)")
flags.DEFINE_bool("overwrite", False, "replace an existing export directory")


def main(argv):
    del argv
    output = FLAGS.output or f"{FLAGS.workdir}/export/1"
    try:
        cfg, segmenter = runner.load_run(FLAGS.workdir)
        path = export.export_saved_model(segmenter, output, cfg.image_scale, overwrite=FLAGS.overwrite)
    except (FileNotFoundError, OSError, ValueError, export.ExportError) as err:
        sys.exit(f"error: {error_message(err)}")
    if not os.path.basename(os.path.normpath(path)).isdigit():
        print(f"note: TF Serving loads numbered version folders (<model>/1, <model>/2, ...); {path} is not one.")
    print(f"SavedModel written to {path}. Signatures: serving_default (image_bytes: PNG/JPEG files -> classes, "
          "confidence), serve_pixels (uint8 [B,H,W,3]), serve (float32 [B,H,W,3] -> logits, labels).")


if __name__ == "__main__":
    app.run(main)

"""Export the final model of a run as a SavedModel for TF Serving.

    python scripts/export.py --workdir=runs/suponly_synthetic_1_16 --output=exported/segmenter/1
    # serve: tensorflow_model_server --model_base_path=$PWD/exported/segmenter --model_name=segmenter
"""

import sys

import _bootstrap  # noqa: F401
from absl import app, flags

from tfsemiseg import export, runner

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "directory of a finished train.py run", required=True)
flags.DEFINE_string("output", None, "SavedModel directory (default: <workdir>/export/1)")


def main(argv):
    del argv
    try:
        _, segmenter = runner.load_run(FLAGS.workdir)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    path = export.export_saved_model(segmenter, FLAGS.output or f"{FLAGS.workdir}/export/1")
    print(f"SavedModel written to {path} (signature 'serve': images float32 [B,H,W,3] in [0,255] "
          "-> logits, labels)")


if __name__ == "__main__":
    app.run(main)

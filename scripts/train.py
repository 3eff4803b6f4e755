"""Train a method.

    python scripts/train.py --method=suponly --dataset=synthetic
    python scripts/train.py --method=alss --split=1464                # VOC at ./data/VOCdevkit/VOC2012
    python scripts/train.py --method=suponly --dataset=camvid --data_dir=../shared/data/camvid --split=1_8
    python scripts/train.py --method=alss --dataset=voc --set lambda_semi=0.2 --set semi_start=2000
    python scripts/train.py --method=stpp --dataset=synthetic          # six stages; rerun to resume

Settings come from configs/ (the paper's, per dataset); flags and --set override them.
"""

import json
import signal
import sys

import _bootstrap  # noqa: F401
from absl import app, flags
from tensorflow import errors as tf_errors

import configs
from tfsemiseg import runner
from tfsemiseg.callbacks import BackupError, TrainingDiverged
from tfsemiseg.data import DataError
from tfsemiseg.methods import METHODS, describe
from tfsemiseg.files import disk_full, error_message

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "suponly", "; ".join(f"{name}: {describe(cls)}" for name, cls in METHODS.items()))
flags.DEFINE_string("dataset", "voc", "voc | cityscapes | camvid | folder | synthetic")
flags.DEFINE_string("split", None, "1464, 1_16, 1_8, 1_4, 1_2, full, a number, or a directory with labeled.txt")
flags.DEFINE_string("data_dir", None, "dataset root (default: ./data/<dataset> or $TFSEMISEG_DATA)")
flags.DEFINE_string("workdir", None, "run directory (default: runs/<method>_<dataset>_<split>)")
flags.DEFINE_multi_string("set", [], "override any config field: --set name=value (repeatable)")
flags.DEFINE_integer("iterations", None, "training iterations (ST / ST++: the teacher's; each student trains as many "
                     "epochs over its labeled + pseudo-labeled list, or --set student_iterations=N)")
flags.DEFINE_integer("batch_size", None, "global batch size")
flags.DEFINE_integer("seed", None, "random seed (split draw, shuffling, initialisation)")
flags.DEFINE_string("backbone", None, "resnet101 | resnet50 | efficientnet_lite0 | _lite1 | _lite2 | small | tiny "
                    "(camvid: tiny selects the from-scratch setting)")
flags.DEFINE_string("arch", None, "deeplabv2 | deeplabv3plus | pspnet")
flags.DEFINE_string("backbone_weights", None, "'' (none), 'imagenet', or a file (keras.applications ResNet "
                    "weights, or an EfficientNet-Lite PyTorch state dict)")
flags.DEFINE_string("eval_split", None, "split evaluated at the end (val, test, ...)")
flags.DEFINE_bool("mixed_precision", None, "mixed_float16 on GPU (mixed_bfloat16 on CPU)")
flags.DEFINE_bool("jit_compile", None, "XLA-compile the train step")
flags.DEFINE_bool("deterministic", None, "reproducible runs on CPU: op determinism, fixed data order; resume "
                  "gives the uninterrupted result (slower)")
flags.DEFINE_string("distribute", None, "none | mirrored (all local GPUs) | multiworker (TF_CONFIG)")
flags.DEFINE_bool("overwrite", False, "delete the workdir's finished or partial run and train again")
flags.DEFINE_integer("verbose", 1, "Keras progress bar: 0 silent, 1 bar, 2 a line per epoch")

DIRECT = ("split", "data_dir", "workdir", "iterations", "batch_size", "seed", "backbone", "arch",
          "backbone_weights", "eval_split", "mixed_precision", "jit_compile", "distribute", "deterministic")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # a kill (SIGTERM) ends the run as Ctrl-C does, with its message


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    signal.signal(signal.SIGTERM, _terminated)
    cfg = None
    try:
        cfg = configs.get_config(FLAGS.method, FLAGS.dataset, FLAGS.backbone)
        cfg = cfg.replace(**{k: FLAGS[k].value for k in DIRECT if FLAGS[k].value is not None})
        cfg = cfg.override(FLAGS.set)
        if not cfg.workdir:
            cfg = cfg.replace(workdir=f"runs/{cfg.method}_{cfg.dataset}_{cfg.split}")
        metrics = runner.train(cfg, verbose=FLAGS.verbose, overwrite=FLAGS.overwrite)
    except runner.RunFinished as finished:
        print(finished)
        return
    except KeyboardInterrupt:
        where = f" (--workdir={cfg.workdir})" if cfg is not None and cfg.workdir else ""
        print(f"interrupted: run the same command to resume{where}; training continues from the last finished "
              "epoch, finished stages are kept.", file=sys.stderr, flush=True)
        sys.exit(130)
    except (DataError, ValueError, FileNotFoundError, TrainingDiverged, BackupError) as err:
        sys.exit(f"error: {error_message(err)}")
    except (OSError, RuntimeError, tf_errors.OpError) as err:
        if not disk_full(err):
            raise
        sys.exit(f"error: {error_message(err)}")
    print(json.dumps({k: metrics[k] for k in ("method", "dataset", "split", "steps", "train_images_per_sec")}))
    for stage, result in metrics.get("stages", {}).items():  # ST / ST++
        seconds = result.get("train_seconds", result.get("seconds"))
        miou = f"val mIoU {100 * result['miou']:.2f}, " if "miou" in result else ""
        print(f"  stage {stage}: {miou}{seconds} s")
    for name, iou in metrics["per_class_iou"].items():
        print(f"  {name:>14s}: {'-' if iou is None else f'{100 * iou:.1f}'}")
    print(f"{metrics['eval_split']} mIoU: {100 * metrics['miou']:.2f}  (written to {cfg.workdir}/metrics.json)")


if __name__ == "__main__":
    app.run(main)

"""GPU paths tested on CPU: MirroredStrategy over two logical CPU devices, and mixed precision.

Each case runs in a subprocess because logical devices must be configured before TensorFlow
initialises, and the precision policy is global.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import configs
from tfsemiseg import runner
method, distribute, mixed, workdir = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
cfg = configs.get_config(method, "synthetic").replace(
    workdir=workdir, iterations=4, steps_per_epoch=2, crop_size=32, batch_size=4, distribute=distribute,
    mixed_precision=mixed, semi_start=2, student_iterations=4, tta_scales=(1.0,), image_size=32)
strategy = runner.make_strategy(distribute)
metrics = runner.train(cfg, verbose=0)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "miou": metrics["miou"],
                  "policy": __import__("keras").mixed_precision.global_policy().name}))
"""


def run(method, distribute, mixed, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, method, distribute, "1" if mixed else "0",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["suponly", "alss", "st", "pseudoseg"])
def test_mirrored_strategy_on_two_logical_cpus(method, tmp_path):
    out = run(method, "mirrored", False, tmp_path)
    assert out["replicas"] == 2 and 0.0 <= out["miou"] <= 1.0


@pytest.mark.parametrize("method", ["alss", "pseudoseg", pytest.param("st", marks=pytest.mark.slow)])
# pseudoseg and st: StrongAugment must stay float32 under the bfloat16 policy
def test_mixed_precision_trains_with_float32_logits(tmp_path, method):
    out = run(method, "none", True, tmp_path)
    assert out["policy"] == "mixed_bfloat16" and 0.0 <= out["miou"] <= 1.0

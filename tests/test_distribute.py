"""GPU paths tested on CPU: MirroredStrategy over two logical CPU devices, and mixed precision.

Each case runs in a subprocess because logical devices must be configured before TensorFlow
initialises, and the precision policy is global.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import configs
from tests.conftest import for_method
from tfsemiseg import runner
method, distribute, mixed, workdir = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
cfg = for_method(configs.get_config(method, "synthetic"),
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


# st's stages are SupOnly fits created in the same strategy scope.
# Suite budget: all four only with -m slow, as the multi-worker runs below; the default suite runs
# one two-replica step against one replica, and a bfloat16 ALSS run.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["suponly", "alss", "st", "pseudoseg"])
def test_mirrored_strategy_on_two_logical_cpus(method, tmp_path):
    out = run(method, "mirrored", False, tmp_path)
    assert out["replicas"] == 2 and 0.0 <= out["miou"] <= 1.0


STEPS = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import configs
from tfsemiseg.data import build_dataset, labeled_stream
from tfsemiseg.methods import SupOnly
from tfsemiseg.training import synchronize_batch_norm
cfg = configs.get_config("suponly", "synthetic").replace(
    crop_size=32, batch_size=4, image_size=32, iterations=10, arch="deeplabv2", aspp_rates=(1, 2, 3, 4),
    weight_decay_in_gradient=True)  # DeepLab-v2: no dropout
ds = build_dataset("synthetic", split="full", image_size=32)
batch = tf.data.Dataset.from_tensors(next(iter(labeled_stream(ds, cfg)))).repeat()
initial, moves = None, {}
for name, wd, strategy in [("one", 0.05, tf.distribute.get_strategy()), ("no_decay", 0.0, tf.distribute.get_strategy()),
                           ("mirrored", 0.05, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
    with strategy.scope():
        model = SupOnly.create(cfg.replace(weight_decay=wd), ds)
    if strategy.num_replicas_in_sync > 1:
        synchronize_batch_norm(model)
    initial = initial or model.segmenter.get_weights()
    model.segmenter.set_weights(initial)
    before = [v.numpy() for v in model.segmenter.trainable_variables]
    model.fit(batch, steps_per_epoch=3, epochs=1, verbose=0)
    moves[name] = np.concatenate([(v.numpy() - b).ravel() for v, b in zip(model.segmenter.trainable_variables, before)])
np.savez(sys.argv[1], **moves)
"""


def test_two_replicas_step_like_one_with_the_decay_in_the_gradient(tmp_path):
    """Under MirroredStrategy (two logical CPUs, SyncBN) three SGD steps with `weight_decay_in_gradient`
    move every weight as one replica does on the same global batch: each replica adds its share of
    wd * w (seeded like the loss), so the sum over replicas is the decay once, not twice.

    Compared at the 90th percentile of the weights' differences: summing over replicas rounds
    differently, and in three steps that can flip a ReLU here and there, which moves a few weights
    by as much as the decay (0.1 % of 337,848 in one CI run, more in another), where the 90th
    percentile stays near 1e-5 of the decay's move. The decay added twice moves most weights by the
    decay's own size (first order: one + (one - no_decay)), 20 times the bound."""
    out = tmp_path / "moves.npz"
    proc = subprocess.run([sys.executable, "-c", STEPS, str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    moves = np.load(out)
    decay = np.abs(moves["one"] - moves["no_decay"])
    bound = 0.05 * np.quantile(decay, 0.9)
    assert bound > 1e-7  # the decay matters at this wd, so a factor of 2 on it would show
    difference = np.abs(moves["mirrored"] - moves["one"])
    assert np.quantile(difference, 0.9) < bound, np.quantile(difference, 0.9) / np.quantile(decay, 0.9)


ALIGN = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfsemiseg.methods.unimatch import DistributionAlignment
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    align = DistributionAlignment(2, momentum=0.0)
def step(labels, probs):
    i = tf.distribute.get_replica_context().replica_id_in_sync_group
    return align(probs[i][None, None], labels[i][None, None], tf.ones([1, 1, 2]))
labels = tf.constant([[0, 0], [0, 1]])  # replica 0 sees class 0 only, replica 1 half and half
probs = tf.constant([[[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.9, 0.1]]])
out = strategy.run(tf.function(step), (labels, probs))
print(json.dumps({"prior": align.prior.numpy().tolist(), "predicted": align.predicted.numpy().tolist(),
                  "aligned": [v.numpy().tolist() for v in strategy.experimental_local_results(out)]}))
"""


def test_two_replicas_align_with_the_same_running_class_frequencies():
    """`DistributionAlignment`'s running means are averaged over replicas (aggregation "mean"), so
    every replica aligns its pseudo-labels with the global batch's class frequencies."""
    proc = subprocess.run([sys.executable, "-c", ALIGN], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["prior"], [0.75, 0.25], rtol=1e-5)
    np.testing.assert_allclose(out["predicted"], [0.7, 0.3], rtol=1e-5)


EMA = r"""
import json
import keras
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfsemiseg import optim
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((4, 4, 3))
    student = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 1)(inputs)))
    teacher = optim.mean_teacher(student)
for w in student.weights:
    w.assign(w + 1.0)
strategy.run(tf.function(lambda: optim.update_mean_teacher(teacher, student, 0.99, tf.constant(3, tf.int64))))
print(json.dumps({"replicas": [[v.numpy().ravel().tolist() for v in strategy.experimental_local_results(w.value)]
                               for w in teacher.weights],
                  "student": [w.numpy().ravel().tolist() for w in student.weights]}))
"""


def test_two_replicas_keep_the_same_mean_teacher():
    """`update_mean_teacher` from the replicas' step: every replica's copy of every teacher weight
    takes the one update (m = 0.75 at step 3: the teacher started equal to the student, which then
    moved by 1)."""
    proc = subprocess.run([sys.executable, "-c", EMA], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for copies, student in zip(out["replicas"], out["student"]):
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_allclose(copy, np.array(student) - 0.75, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["alss", pytest.param("pseudoseg", marks=pytest.mark.slow),
                                    pytest.param("st", marks=pytest.mark.slow)])  # suite budget
# pseudoseg and st: StrongAugment must stay float32 under the bfloat16 policy
def test_mixed_precision_trains_with_float32_logits(tmp_path, method):
    out = run(method, "none", True, tmp_path)
    assert out["policy"] == "mixed_bfloat16" and 0.0 <= out["miou"] <= 1.0


WORKER = r"""
import json, sys
import configs
from tests.conftest import for_method
from tfsemiseg import runner
method, distribute, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = for_method(configs.get_config(method, "synthetic"),
    workdir=workdir, iterations=4, steps_per_epoch=2, crop_size=32, batch_size=4, distribute=distribute,
    semi_start=2, image_size=32, deterministic=True, arch="deeplabv2", aspp_rates=(1, 2, 3, 4))  # no dropout
metrics = runner.train(cfg, verbose=0)
print(json.dumps({"miou": metrics["miou"]}))
"""


def _free_ports(n):
    import socket
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _final_weights(workdir):
    import keras

    import tfsemiseg.models  # noqa: F401  (registers the custom layers)
    return keras.saving.load_model(os.path.join(workdir, "final", "segmenter.keras")).get_weights()


@pytest.mark.slow  # suite budget
@pytest.mark.parametrize("method", ["suponly", "alss"])
def test_multi_worker_on_localhost_matches_one_process(method, tmp_path):
    """Two processes under MultiWorkerMirroredStrategy (TF_CONFIG, two localhost ports) train on the
    same global batches as one process: same weights after training, same mIoU; only the chief writes
    the run directory, the other worker its own under workers/."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": ROOT,
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, method, "multiworker", str(tmp_path / "multi")],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    single = subprocess.run([sys.executable, "-c", WORKER, method, "none", str(tmp_path / "single")],
                            capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert single.returncode == 0, single.stderr[-3000:]
    miou = [json.loads(out.strip().splitlines()[-1])["miou"] for out, _ in outputs]
    assert miou[0] == pytest.approx(miou[1], abs=1e-6)  # both workers evaluated the same model
    assert miou[0] == pytest.approx(json.loads(single.stdout.strip().splitlines()[-1])["miou"], abs=2e-3)
    # ALSS: Adam turns the float-level differences of summing over workers into steps of up to 2 lr
    # (1e-4) on near-zero gradients of D, which reach the segmenter through the adversarial loss.
    atol = 1e-4 if method == "suponly" else 5e-4
    for a, b in zip(_final_weights(tmp_path / "multi"), _final_weights(tmp_path / "single")):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol)
    assert os.path.exists(tmp_path / "multi" / "workers" / "worker_1" / "metrics.json")
    assert not os.path.exists(tmp_path / "multi" / "workers" / "worker_0")


def test_sync_bn_reaches_every_batch_norm_of_a_method():
    """Under --distribute, every batch norm a method trains computes global statistics, including
    the ones a layer holds as an attribute (PseudoSeg's SGC), which no `.layers` list contains."""
    import keras

    import configs
    from tfsemiseg.data import build_dataset
    from tfsemiseg.methods import get_method
    from tfsemiseg.training import synchronize_batch_norm

    cfg = configs.get_config("pseudoseg", "synthetic").replace(crop_size=32, batch_size=2)
    model = get_method("pseudoseg").create(cfg, build_dataset("synthetic", split="1_16", image_size=32))
    synchronize_batch_norm(model)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert "head_sgc_bn" in [n.name for n in norms] and all(n.synchronized for n in norms)

"""Proof that any kill at any moment resumes exactly (README, "Runs that can be trusted").

Each case trains once straight through with `--deterministic`, then trains the same command again
while SIGKILLing it at random moments of its life (startup, data checks, a step, a backup or
checkpoint write, the final evaluation, an ST++ labelling stage or stage boundary), rerunning it
after each kill; a last rerun finishes it. It must end with the uninterrupted run's step count,
mIoU and weights, bit for bit. Slow: 41 minutes on 2 cores shared with a benchmark (30 kills).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_cli import ROOT, run

pytestmark = pytest.mark.slow

SMALL = ["--dataset=synthetic", "--set", "crop_size=32", "--set", "batch_size=2", "--seed=5", "--deterministic",
         "--verbose=0"]
CASES = {
    # method: (arguments, kills)
    "suponly": (["--method=suponly", "--iterations=30", "--set", "steps_per_epoch=5"], 8),
    "alss": (["--method=alss", "--iterations=30", "--set", "steps_per_epoch=5", "--set", "semi_start=10"], 7),
    # Teacher, selection, two labelling stages and two students: the kills land on stage boundaries.
    "stpp": (["--method=stpp", "--iterations=6", "--set", "steps_per_epoch=2", "--set", "student_iterations=4",
              "--set", "image_size=32", "--set", "eval_batch_size=64"], 6),
}
TOTAL_KILLS = sum(kills for _, kills in CASES.values())


def _final(workdir):
    import keras

    import tfsemiseg.models  # noqa: F401  (registers the custom layers)

    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    model = keras.saving.load_model(os.path.join(workdir, "final", "segmenter.keras"), compile=False)
    return metrics, [w.numpy() for w in model.weights]


@pytest.mark.parametrize("method", list(CASES))
def test_random_kills_resume_to_the_uninterrupted_weights(tmp_path, method):
    args, kills = CASES[method]
    args = [*args, *SMALL]
    reference = str(tmp_path / "reference")
    started = time.time()
    proc = run("train.py", f"--workdir={reference}", *args)
    duration = time.time() - started
    assert proc.returncode == 0, proc.stderr[-2000:]

    expected, weights = _final(reference)
    rng = np.random.default_rng(sum(map(ord, method)))
    moments = []  # seconds after its start at which each kill landed
    runs = 0
    while len(moments) < kills:  # a run that finishes before its kills are spent: another one
        killed = str(tmp_path / f"killed_{runs}")
        runs += 1
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--workdir={killed}", *args]
        while True:  # rerun after each kill, as a user would, until the run finishes on its own
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            moment = float(rng.uniform(0.0, duration))
            try:
                _, err = proc.communicate(timeout=moment)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                moments.append(round(moment, 1))
                continue
            assert proc.returncode == 0, (moments, err[-2000:])
            break
        got, resumed = _final(killed)
        assert got["steps"] == expected["steps"] and got["miou"] == expected["miou"], moments
        assert len(weights) == len(resumed)
        for a, b in zip(weights, resumed):
            np.testing.assert_array_equal(a, b, err_msg=f"killed at {moments} s")
    print(f"{method}: {len(moments)} kills at {moments} s of a {duration:.0f} s run ({runs} runs); same weights")

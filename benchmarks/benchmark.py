"""Speed of a method's real train_step, and of its input pipeline, on this machine.

    python benchmarks/benchmark.py --method=alss --arch=deeplabv2 --backbone=resnet101 --crop=161 --batch=2
    python benchmarks/benchmark.py --method=alss ... --mixed_precision --freeze_bn --jit_compile
    python benchmarks/benchmark.py --method=alss ... --torch_python=/path/to/torch-venv/bin/python
    python benchmarks/benchmark.py --setting=camvid --method=suponly --mixed_precision   # the CamVid step

Prints a header (TensorFlow, cores, what a dense matmul reaches in float32 and bfloat16), then
the train step: the method's own `train_step` through `fit`, on random tensors shaped like its
tf.data batches (no input pipeline), after a warm-up; `--repeats` timings of `--steps` steps
each, their median and max / min, segmenter images per second and the peak resident memory.
Then the input pipeline alone (`--pipeline`: the same augmented tf.data stream with no model, on
`synthetic` or a CamVid folder) in batches per second, against what the step consumes.
With `--profile=DIR`, `--steps` more steps are traced with the TF profiler into DIR and the op
types that take the time are printed: each op's wall time summed over the executor threads (two
ops running at once both count), as a share of the traced steps' wall time.
With `--torch_python`, `../shared/bench/torch_alss_step.py` runs with the same crop, batch and
classes in that (comparison-only) interpreter, in each of `--torch_settings` (default: float32,
channels_last, bf16 and bf16 + channels_last, PyTorch's best eager CPU setting), and two ratios
are printed: against PyTorch in the same precision (bfloat16 with `--mixed_precision`) at its
faster layout, and against PyTorch's best of the settings measured, whatever its precision.
"""

import argparse
import collections
import glob
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tfsemiseg  # noqa: E402,F401  (before TensorFlow: oneDNN kernels, see tfsemiseg/__init__.py)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import configs  # noqa: E402
from tfsemiseg.data import build_dataset  # noqa: E402
from tfsemiseg.methods import SegmentationMethod, get_method  # noqa: E402
from tfsemiseg.training import set_precision  # noqa: E402


# Per --setting: the flags' defaults (the rest of the model comes from configs/, e.g. the CamVid
# head's width and ASPP rates).
SETTINGS = {
    "voc": dict(arch="deeplabv2", backbone="resnet101", output_stride=8, crop=161, batch=2, classes=21),
    "camvid": dict(arch="deeplabv3plus", backbone="efficientnet_lite0", output_stride=16, crop=224, batch=8,
                   classes=11),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="alss")
    p.add_argument("--setting", default="voc", choices=sorted(SETTINGS),
                   help="the workload the other flags default to: voc, the issue's DeepLab-v2 ResNet-101 (crop "
                   "161, batch 2, 21 classes, against the PyTorch reference); camvid, the CamVid setting's "
                   "DeepLab-v3+ EfficientNet-Lite0 (crop 224, batch 8, 11 classes, its head)")
    p.add_argument("--arch", default=None)
    p.add_argument("--backbone", default=None)
    p.add_argument("--output_stride", type=int, default=None)
    p.add_argument("--aspp_rates", default="", help="e.g. 1,2,3 for small crops; default: DeepLab's for the "
                   "output stride (v2: 6/12/18/24; v3+: 12/24/36 at OS 8, 6/12/18 at OS 16), meant for crops "
                   "of 321 and more: at small crops dilations wider than the feature map waste most of the step")
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--jit_compile", action="store_true")
    p.add_argument("--mixed_precision", action="store_true")
    p.add_argument("--freeze_bn", action="store_true")
    p.add_argument("--autotune", action="store_true",
                   help="leave tf.data's autotuning on for the in-memory batches (how the timings were quantized)")
    p.add_argument("--inter_op_threads", type=int, default=0, help="TensorFlow's inter-op threads (0: its default)")
    p.add_argument("--intra_op_threads", type=int, default=0, help="TensorFlow's intra-op threads (0: its default)")
    p.add_argument("--keras_batch_norm", action="store_true",
                   help="Keras' own (unfused) BatchNormalization instead of the project's fused one, to compare")
    p.add_argument("--keras_dilated_conv", action="store_true",
                   help="Keras' own dilated Conv2D (SpaceToBatchND around a convolution) instead of one op, to compare")
    p.add_argument("--pipeline", default="synthetic", help="'synthetic', a CamVid folder, or '' to skip")
    p.add_argument("--pipeline_batches", type=int, default=30)
    p.add_argument("--torch_python", default="", help="python of a venv with torch, for the reference")
    p.add_argument("--torch_script", default=os.path.join(ROOT, "..", "shared", "bench", "torch_alss_step.py"))
    p.add_argument("--torch_settings", default="fp32,channels_last,bf16,bf16+channels_last",
                   help="the reference's settings to time, comma-separated: fp32, channels_last, bf16, bf16+channels_last")
    p.add_argument("--profile", default="", help="folder: trace --steps more steps with the TF profiler (open it "
                   "in TensorBoard's profile plugin) and print the op types that take the time")
    p.add_argument("--top", type=int, default=15, help="op types printed with --profile")
    args = p.parse_args(argv)
    for name, value in SETTINGS[args.setting].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def matmul_gflops(dtype, n=2048, repeats=10):
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def benchmark_config(args):
    cfg = configs.get_config(args.method, args.setting).replace(
        arch=args.arch, backbone=args.backbone, output_stride=args.output_stride, crop_size=args.crop,
        batch_size=args.batch, backbone_weights="", freeze_bn=args.freeze_bn, jit_compile=args.jit_compile,
        mixed_precision=args.mixed_precision, aspp_rates=(), iterations=10 ** 6, image_size=max(64, args.crop))
    if args.aspp_rates:
        return cfg.replace(aspp_rates=tuple(int(r) for r in args.aspp_rates.split(",")))
    if args.setting == "camvid" and (args.arch, args.output_stride) == (cfg.arch, cfg.output_stride):
        return cfg.replace(aspp_rates=configs.get_config(args.method, "camvid").aspp_rates)
    if args.arch == "deeplabv3plus":
        cfg = cfg.replace(aspp_rates=(12, 24, 36) if args.output_stride == 8 else (6, 12, 18))
    return cfg


def random_batch(spec, classes):
    """Random tensors with the structure and shapes of a tf.data element spec."""
    def fill(path, s):
        name = path[-1]
        if name.startswith("image"):
            return tf.random.uniform(s.shape, 0, 255, s.dtype)
        if name == "label":
            return tf.cast(tf.random.uniform(s.shape, 0, classes, tf.int32), s.dtype)
        if name == "classes":
            return tf.cast(tf.random.uniform([s.shape[0], classes], 0, 2, tf.int32), s.dtype)
        return tf.ones(s.shape, s.dtype)  # valid masks
    if isinstance(spec, dict):
        return {k: random_batch(v, classes) if isinstance(v, dict) else fill([k], v) for k, v in spec.items()}
    return fill(["image"], spec)


def resident_mib():
    """This process's resident memory now and its file-backed part (pages of mapped shared libraries,
    TensorFlow's own code among them), in MiB (Linux; zeros elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            status = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f if line.startswith(("VmRSS", "RssFile"))}
        return status["VmRSS"], status["RssFile"]
    except (OSError, KeyError):
        return 0.0, 0.0


def in_memory_stream(batch, autotune=False):
    """The same batch forever, without tf.data's autotuning: there is nothing to tune, and with it
    each `fit` returned only when the autotuner's thread next woke up (its period doubles from
    10 ms), so that short fits timed in multiples of about 2 s (3.41 or 6.83 s per step over 3 steps)."""
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return tf.data.Dataset.from_tensors(batch).repeat().with_options(options)


def use_keras_layers(batch_norm, dilated_conv):
    """Every layer built from now on takes Keras' own path: unfused batch norm, dilated convolutions
    by SpaceToBatchND (the project's layers before they were replaced, for comparison)."""
    from tfsemiseg.models import convolution, normalization
    if batch_norm:
        normalization.BatchNormalization._fusable = lambda self, inputs, mask: False
    if dilated_conv:
        convolution.native_dilation_supported = lambda: False


def time_train_step(args, cfg):
    method = get_method(args.method)
    if not issubclass(method, SegmentationMethod):
        raise SystemExit(f"--method={args.method} drives SupOnly fits: benchmark --method=suponly instead.")
    spec_source = build_dataset("synthetic", split="1_16", image_size=cfg.image_size)
    spec = method.train_data(spec_source, cfg).element_spec
    fake = types.SimpleNamespace(num_classes=args.classes, background=0 if args.classes == 21 else None)
    memory = [("imported", resident_mib())]
    model = method.create(cfg, fake)
    memory.append(("model built", resident_mib()))
    data = in_memory_stream(random_batch(spec, args.classes), args.autotune)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    memory.append(("after 2 steps", resident_mib()))
    print("resident memory (MiB): " + ", ".join(f"{name} {rss:.0f} (file-backed {file:.0f})" for name, (rss, file) in memory))
    seconds, cpu_seconds, after_last_step = [], [], []
    last_step = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: setattr(last_step, "at", time.perf_counter()))
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False, callbacks=[last_step])
        end = time.perf_counter()
        seconds.append((end - start) / args.steps)
        cpu_seconds.append((time.process_time() - cpu_start) / args.steps)
        after_last_step.append(end - last_step.at)
    print(f"CPU time per step: {statistics.median(cpu_seconds):.3f} s "
          f"({statistics.median(cpu_seconds) / statistics.median(seconds):.2f} cores busy); `fit` returned "
          f"{', '.join(f'{s:.3f}' for s in after_last_step)} s after its last step")
    if args.profile:
        profile_steps(args, model, data)
    return seconds, segmenter_images(spec)


def segmenter_images(spec):
    """Images per step that the segmenter sees: every image tensor of the batch (labeled, unlabeled,
    strong views), not ALSS' `real` label maps for its discriminator."""
    if not isinstance(spec, dict):
        return spec.shape[0]
    return sum(segmenter_images(v) if isinstance(v, dict) else v.shape[0]
               for k, v in spec.items() if k != "real" and (isinstance(v, dict) or k.startswith("image")))


def profile_steps(args, model, data):
    """Trace `args.steps` steps into `args.profile`; print the op types by summed wall time."""
    tf.profiler.experimental.start(args.profile)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the profiler's own trace format
    path = max(glob.glob(os.path.join(args.profile, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    seconds, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's inter-op threads run the graph's ops
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:  # "scope/op_name:OpType"; not the executor's own events
                    op_type = name.rsplit(":", 1)[1]
                    seconds[op_type] += event.duration_ps * 1e-12
                    counts[op_type] += 1
    busy = sum(seconds.values())
    print(f"profile ({path}): {args.steps} steps in {wall:.2f} s; ops' summed wall time {busy:.2f} s "
          f"({100 * busy / wall:.0f} % of the steps' wall time)")
    for op_type, s in seconds.most_common(args.top):
        print(f"  {op_type:32s} {s / args.steps:7.3f} s/step  {100 * s / wall:5.1f} %  x{counts[op_type] // args.steps}")


def pipeline_rate(args, cfg):
    if args.pipeline == "synthetic":
        dataset = build_dataset("synthetic", split="1_16", image_size=cfg.image_size)
    else:
        dataset = build_dataset("camvid", args.pipeline, "1_8")
        cfg = cfg.replace(ignore_value=11)
    stream = iter(get_method(args.method).train_data(dataset, cfg))
    for _ in range(3):
        next(stream)
    start = time.perf_counter()
    for _ in range(args.pipeline_batches):
        next(stream)
    return args.pipeline_batches / (time.perf_counter() - start)


# Runs the reference script in its interpreter, then prints that process's own peak resident memory
# (VmHWM: a forked child's getrusage maximum would include this process's memory at the fork).
_PEAK_WRAPPER = """import runpy, sys
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith(("VmHWM", "RssFile"))}
    print(f"peak_rss_kib={status['VmHWM']} rss_file_kib={status['RssFile']}")
"""


TORCH_FLAGS = {"fp32": [], "channels_last": ["--channels_last"], "bf16": ["--bf16"],
               "bf16+channels_last": ["--bf16", "--channels_last"]}


def torch_reference(args, setting="fp32"):
    """(seconds per iteration, GFLOP per iteration, peak RSS and the file-backed part of RSS at the end
    in MiB, its summary line) of the PyTorch step in `setting` (a `TORCH_FLAGS` key)."""
    cmd = [args.torch_python, "-c", _PEAK_WRAPPER, args.torch_script, "--crop", str(args.crop),
           "--batch", str(args.batch), "--classes", str(args.classes), "--steps", str(args.steps)]
    cmd += TORCH_FLAGS[setting] + (["--freeze_bn"] if args.freeze_bn else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    gflop = re.search(r"gflop_per_step=([\d.]+)", out)
    summary = [line for line in out.splitlines() if "step_s=" in line][-1]
    return (float(re.search(r"step_s=([\d.]+)", out).group(1)), float(gflop.group(1)) if gflop else None,
            int(re.search(r"peak_rss_kib=(\d+)", out).group(1)) / 1024,
            int(re.search(r"rss_file_kib=(\d+)", out).group(1)) / 1024, summary)


def main(argv=None):
    args = parse_args(argv)
    if args.inter_op_threads:  # before TensorFlow starts its runtime
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    set_precision(args.mixed_precision)
    use_keras_layers(args.keras_batch_norm, args.keras_dilated_conv)
    cfg = benchmark_config(args)
    peak_gflops = {"float32": matmul_gflops(tf.float32), "bfloat16": matmul_gflops(tf.bfloat16)}
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} cores; dense matmul 2048^2: "
          f"{peak_gflops['float32']:.0f} GFLOP/s float32, {peak_gflops['bfloat16']:.0f} GFLOP/s bfloat16")
    print(f"{args.method}: {args.arch} {args.backbone} OS{args.output_stride} ASPP {cfg.aspp_rates or 'default'}, "
          f"crop {args.crop}, batch {args.batch}, "
          f"{args.classes} classes, jit_compile={args.jit_compile}, mixed_precision={args.mixed_precision}, "
          f"freeze_bn={args.freeze_bn}, batch norm {'Keras (unfused)' if args.keras_batch_norm else 'fused'}, "
          f"dilated conv {'Keras (SpaceToBatchND)' if args.keras_dilated_conv else 'one op'}, "
          f"autotune={args.autotune}, threads inter-op {args.inter_op_threads or 'default'} "
          f"intra-op {args.intra_op_threads or 'default'}")
    seconds, images = time_train_step(args, cfg)
    median = statistics.median(seconds)
    print("train step s/iter: " + ", ".join(f"{s:.3f}" for s in seconds))
    print(f"median {median:.3f} s/iter (max/min {max(seconds) / min(seconds):.2f}), "
          f"{images / median:.2f} segmenter images/s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (file-backed {resident_mib()[1]:.0f})")
    if args.pipeline:
        rate = pipeline_rate(args, cfg)
        print(f"input pipeline ({args.pipeline}): {rate:.1f} batches/s, {rate * median:.1f}x what the step consumes")
    if args.torch_python:
        compare_with_torch(args, median, peak_gflops)
    return 0


def compare_with_torch(args, median, peak_gflops):
    """Time the PyTorch reference in each of `--torch_settings` and print tfsemiseg's ratios: against
    the same precision (its faster layout) and against the best setting measured."""
    measured, gflop = {}, None
    for setting in [s.strip() for s in args.torch_settings.split(",") if s.strip()]:
        if setting not in TORCH_FLAGS:
            raise SystemExit(f"--torch_settings: unknown setting {setting!r}; choose from {', '.join(TORCH_FLAGS)}")
        seconds, gflop_i, peak, file, line = torch_reference(args, setting)
        measured[setting], gflop = seconds, gflop or gflop_i
        print(f"PyTorch {setting}: {line}, peak RSS {peak:.0f} MiB (file-backed {file:.0f})")
    precision = "bfloat16" if args.mixed_precision else "float32"
    same = {k: v for k, v in measured.items() if k.startswith("bf16") == args.mixed_precision}
    if same:
        name = min(same, key=same.get)
        print(f"ratio tfsemiseg ({precision}) / PyTorch same precision ({name}): {median / same[name]:.2f} "
              "(below 1: tfsemiseg faster)")
    best = min(measured, key=measured.get)
    print(f"ratio tfsemiseg ({precision}) / PyTorch's best ({best}, {measured[best]:.3f} s): "
          f"{median / measured[best]:.2f}; PyTorch's best / tfsemiseg: {measured[best] / median:.2f}x")
    if gflop:  # the same arithmetic: the reference counts it with torch's FLOP counter
        print(f"tfsemiseg arithmetic: {gflop / median:.0f} GFLOP/s, {100 * gflop / median / peak_gflops[precision]:.0f} % "
              f"of the {precision} dense matmul ({gflop:.1f} GFLOP per iteration)")


if __name__ == "__main__":
    sys.exit(main())

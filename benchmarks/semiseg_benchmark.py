"""The accuracy benchmarks in one command: every method at one split over several seeds, resumable.

    python benchmarks/semiseg_benchmark.py --dataset=synthetic     # the built-in set, 1/16: minutes a run
    python benchmarks/semiseg_benchmark.py --dataset=camvid        # CamVid from ImageNet, 1/16: hours
    python benchmarks/semiseg_benchmark.py --dataset=camvid --table_only   # tables and figure only

Each run is `scripts/train.py --method=M --dataset=D --split=S --seed=N --mixed_precision` in
`<runs_dir>/<label>_<split>_seed<N>/` (log beside it), every method at its dataset's setting
(configs/), so at the same labeled-batch iteration budget. ST and ST++ take the same seed's
SupOnly run as their teacher (`--set teacher=...`; it runs first, also when --methods leaves
SupOnly out), so each seed's teacher trains once and is the SupOnly row they are compared with
(where the teacher's record exists but its run does not, as on a fresh clone, it trains again and
its record takes the new run, keeping the earlier run's result under `earlier_runs`). Runs go seed
by seed (seed 0 of every method first), so a partial benchmark already compares all methods. A
finished run leaves a small record, `<records>/<label>_<split>_seed<N>.json` (its metrics, command
and wall time; paths in it relative to the checkout, `RUNS/` for the runs folder), meant to be
committed: a run with a record is skipped, on this machine or a fresh one. An
interrupted run resumes where train.py left it (its stages and backups), so the command can be
stopped and run again. The wall time of every attempt is added up in `<run>.attempts.json` (beside
the run, which train.py keeps to its own files), brought up to date every minute while a run
goes, so an attempt whose benchmark process is killed still counts.

After every run the markdown tables are rewritten to `<records>/results.md` from every record in
the folder, whichever command wrote it (mean +- std per method; the variants with their settings;
per run; mean per-class IoU), ready to paste into RESULTS.md, and the figure
`<records>.png` (one dot per seed and method, lines at SupOnly on the split and on full labels)
is drawn when matplotlib is installed (`pip install -e .[benchmarks]`; not a runtime dependency).

Run it from a checkout nobody edits meanwhile (e.g. `git worktree add ../bench HEAD`, then
`--records` pointing back into the working checkout): TensorFlow's AutoGraph reads a function's
source from disk when it first converts it, so a run that outlives an edit of `tfsemiseg/` can
convert the wrong lines and fail.

`--variant=LABEL=METHOD ARGS` adds a method with other settings, e.g.
`--variant="alss_d_lr_1e-4=alss --set d_lr=1e-4"`; `--upper_bound_seeds` adds SupOnly on the
full labels. The earlier 800-iteration CamVid records (float32, ST training its own teachers):
`--records=benchmarks/camvid_pretrained --precision=fp32 --no_reuse_teacher --table_only`.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Per dataset: the split, where the data is (None: built in) and the suffix of the records folder.
# Precision: CamVid in bfloat16, where the CPU computes it (the cheaper runs); the synthetic
# set in float32 on every machine (its 64x64 crops on a tiny ResNet gain nothing from bfloat16).
DATASETS = {
    "camvid": dict(split="1_16", data_dir=os.path.join(ROOT, "..", "shared", "data", "camvid"), precision="bf16"),
    "synthetic": dict(split="1_16", data_dir=None, precision="fp32"),
}


def registered_methods():
    """Every registered method, SupOnly first (the teachers and the baseline)."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tfsemiseg  # noqa: F401  (before TensorFlow)
    from tfsemiseg.methods import METHODS

    return ["suponly"] + [m for m in METHODS if m != "suponly"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS))
    parser.add_argument("--methods", default=None, help="comma-separated --method values (default: every method)")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=METHOD [train.py args] (repeatable)")
    parser.add_argument("--split", default=None, help="default: camvid 1_16, synthetic 1_16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--upper_bound_seeds", default="0,1,2", help="seeds of SupOnly on --split=full ('' for none)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--runs_dir", default=None, help="default: runs/benchmark/<dataset>")
    parser.add_argument("--records", default=None, help="folder of finished runs' records and results.md (commit "
                        "it); default: benchmarks/<dataset>")
    parser.add_argument("--precision", default=None, choices=("bf16", "fp32"),
                        help="bf16: every run with --mixed_precision (default: camvid bf16, synthetic fp32)")
    parser.add_argument("--no_reuse_teacher", action="store_true",
                        help="ST / ST++ train their own teacher instead of taking the seed's SupOnly run")
    parser.add_argument("--backbone", default=None, help="e.g. tiny for the from-scratch setting")
    parser.add_argument("--set", action="append", default=[], help="name=value for every run (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs to do, run nothing")
    parser.add_argument("--table_only", action="store_true", help="rewrite the tables and the figure from the records in --records")
    args = parser.parse_args(argv)
    defaults = DATASETS[args.dataset]
    known = registered_methods()
    args.methods = known if args.methods is None else [m for m in args.methods.split(",") if m]
    named = [("--methods", m) for m in args.methods]
    named += [(f"--variant={spec}", (shlex.split(spec.partition("=")[2]) or [""])[0]) for spec in args.variant]
    for flag, method in named:
        if method and method not in known:
            parser.error(f"{flag}: no method {method!r}; the registered methods are {', '.join(known)}")
    args.split = args.split or defaults["split"]
    args.precision = args.precision or defaults["precision"]
    args.data_dir = args.data_dir or defaults["data_dir"]
    args.runs_dir = args.runs_dir or os.path.join(ROOT, "runs", "benchmark", args.dataset)
    args.records = args.records or os.path.join(ROOT, "benchmarks", args.dataset)
    return args


def plan(args):
    """[(label, method, split, seed, extra args)] in the order they run: the methods seed by seed,
    the upper bound after the first seed, the variants last."""
    variants = []
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        words = shlex.split(rest)
        if not label or not words:
            raise SystemExit(f"--variant={spec!r}: expected LABEL=METHOD [args]")
        variants.append((label, words[0], words[1:]))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    main = [[(m, m, args.split, seed, []) for m in args.methods] for seed in seeds]
    upper = [("suponly", "suponly", "full", int(s), []) for s in args.upper_bound_seeds.split(",") if s]
    runs = main[0] + upper if main else upper
    for later in main[1:]:
        runs += later
    runs += [(label, method, args.split, seed, extra) for seed in seeds for label, method, extra in variants]
    return runs if args.no_reuse_teacher else with_teachers(runs)


def with_teachers(runs):
    """`runs` with the seed's SupOnly run before the first ST / ST++ run that takes it as teacher
    (whether or not --methods names SupOnly), and each run once."""
    out, seen = [], set()
    for run in runs:
        label, method, split, seed, _ = run
        if takes_teacher(method) and ("suponly", split, seed) not in seen:
            out.append(("suponly", "suponly", split, seed, []))
            seen.add(("suponly", split, seed))
        if (label, split, seed) not in seen:
            out.append(run)
            seen.add((label, split, seed))
    return out


def with_missing_teachers(args, todo):
    """`todo` with the seed's SupOnly run again before an ST / ST++ run whose teacher has a record but
    no finished run in --runs_dir (a fresh machine, another runs folder): the teacher trains again and
    its record takes the new run (the earlier one's result kept), so the SupOnly row stays the run the
    students learned from."""
    if args.no_reuse_teacher:
        return todo
    out = []
    for run in todo:
        label, method, split, seed, _ = run
        teacher = ("suponly", "suponly", split, seed, [])
        if (takes_teacher(method) and teacher not in out
                and not os.path.exists(os.path.join(run_dir(args, "suponly", split, seed), "metrics.json"))):
            print(f"{label} seed {seed}: its teacher has a record but no run in {args.runs_dir}; "
                  "SupOnly trains again and its record takes the new run", flush=True)
            out.append(teacher)
        if run not in out:
            out.append(run)
    return out


def run_dir(args, label, split, seed):
    return os.path.join(args.runs_dir, f"{label}_{split}_seed{seed}")


def takes_teacher(method):
    """Whether `method` takes a SupOnly run as its teacher (owns the `teacher` setting: ST, ST++)."""
    sys.path.insert(0, ROOT)
    from tfsemiseg.methods import METHODS

    return "teacher" in METHODS[method].hyperparameters


def command(args, method, split, seed, workdir, extra):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--method={method}",
           f"--dataset={args.dataset}", f"--split={split}", f"--seed={seed}", f"--workdir={workdir}", "--verbose=2"]
    if args.data_dir:
        cmd.append(f"--data_dir={args.data_dir}")
    if args.precision == "bf16":
        cmd.append("--mixed_precision")
    if args.backbone:
        cmd.append(f"--backbone={args.backbone}")
    for item in args.set:
        cmd += ["--set", item]
    if takes_teacher(method) and not args.no_reuse_teacher:
        cmd += ["--set", f"teacher={run_dir(args, 'suponly', split, seed)}"]
    return cmd + list(extra)


def portable(cmd, args):
    """The command as a record keeps it: no machine paths (the runs folder as RUNS/, other paths
    relative to the checkout)."""
    def word(text):
        flag, eq, value = text.rpartition("=") if text.startswith("--") or "=" in text else ("", "", text)
        if os.path.isabs(value):
            value = ("RUNS/" + os.path.relpath(value, args.runs_dir) if value.startswith(args.runs_dir + os.sep)
                     else os.path.relpath(value, ROOT))
        return f"{flag}{eq}{value}"

    return " ".join(shlex.quote(word(c)) for c in cmd[1:])


def record_path(args, label, split, seed):
    return os.path.join(args.records, f"{label}_{split}_seed{seed}.json")


HEARTBEAT_SECONDS = 60


def execute(args, label, method, split, seed, extra):
    """Run (or resume) one training run; when it has finished, write its record."""
    workdir = run_dir(args, label, split, seed)
    os.makedirs(workdir, exist_ok=True)
    cmd = command(args, method, split, seed, workdir, extra)
    attempts_path = workdir + ".attempts.json"
    if os.path.exists(os.path.join(workdir, "benchmark.json")):  # where earlier versions kept it
        os.replace(os.path.join(workdir, "benchmark.json"), attempts_path)
    attempts = json.load(open(attempts_path)) if os.path.exists(attempts_path) else []
    if not os.path.exists(os.path.join(workdir, "metrics.json")):
        print(f"[{time.strftime('%H:%M:%S')}] {label} split={split} seed={seed}: {' '.join(cmd[1:])}", flush=True)
        attempt = {"seconds": 0.0, "exit": None}  # `exit` stays None if this process is killed
        attempts.append(attempt)
        start = time.time()
        with open(workdir + ".log", "a") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            code = None
            while code is None:
                try:
                    code = process.wait(timeout=HEARTBEAT_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                attempt.update(seconds=round(time.time() - start, 1), exit=code)
                _write_json(attempts_path, attempts)
        if code != 0:
            print(f"  failed with exit {code}; see {workdir}.log", flush=True)
            return code
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    path = record_path(args, label, split, seed)
    _write_json(path, keeping_earlier_runs(path, {
        "label": label, "method": method, "split": split, "seed": seed,
        "command": portable(cmd, args),
        "wall_seconds": round(sum(a["seconds"] for a in attempts), 1), "attempts": len(attempts), "metrics": metrics}))
    return 0


def keeping_earlier_runs(path, record):
    """`record`, with the results of the record it replaces at `path` kept under `earlier_runs` (val mIoU,
    wall time, command): a teacher trained again on a fresh machine rewrites its seed's record, and a
    measured run is never dropped; the spread between two runs of one seed stays in view."""
    earlier = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        earlier = old.pop("earlier_runs", [])
        if old["metrics"] != record["metrics"]:  # another run, not this run's record written again
            earlier.append({"miou": old["metrics"]["miou"], "wall_seconds": old["wall_seconds"],
                            "command": old.get("command", "")})
    return {**record, "earlier_runs": earlier} if earlier else record


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


class Run(NamedTuple):
    """A finished run's record: its seed, train.py's metrics, the wall seconds of all its attempts, their
    count, the command (portable) and the val mIoU of the earlier runs of the seed it replaced."""
    seed: int
    metrics: dict
    wall_seconds: float
    attempts: int
    command: str
    earlier_mious: tuple


def finished(args):
    """{label: [Run]} of every record in --records, whatever
    command wrote it: the registered methods first (SupOnly first), SupOnly on full labels, then the
    variants by label. A run on another split than --split is keyed `label (split)`."""
    records = []
    for name in sorted(os.listdir(args.records)) if os.path.isdir(args.records) else []:
        if name.endswith(".json"):
            with open(os.path.join(args.records, name)) as f:
                record = json.load(f)
            if {"label", "split", "seed", "metrics"} <= set(record):
                records.append(record)
    methods = registered_methods()

    def key(record):
        return record["label"] if record["split"] == args.split else f"{record['label']} ({record['split']})"

    def rank(label):
        if label in methods:
            return (0, methods.index(label), ())
        if label == "suponly (full)":
            return (1, 0, ())
        return (2, 0, tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)))  # it3000 < it12000

    results = {}
    for record in sorted(records, key=lambda r: (rank(key(r)), r["seed"])):
        results.setdefault(key(record), []).append(Run(
            record["seed"], record["metrics"], record["wall_seconds"], record["attempts"], record.get("command", ""),
            tuple(run["miou"] for run in record.get("earlier_runs", []))))
    return results


# What every benchmark command carries; the rest of a record's command is its variant's settings.
_STANDARD = ("scripts/", "--method=", "--dataset=", "--split=", "--seed=", "--workdir=", "--verbose=",
             "--data_dir=", "--mixed_precision", "teacher=")


def settings(command):
    """The settings a record's command adds to its method's benchmark command, e.g. `--set tau=0`."""
    words = shlex.split(command)
    kept = [w for i, w in enumerate(words) if not w.startswith(_STANDARD)
            and not (w == "--set" and i + 1 < len(words) and words[i + 1].startswith("teacher="))]
    return " ".join(kept)


def label_and_split(key, args):
    """(label, split) of a key of `finished`: `label` on --split, `label (split)` on another split."""
    label, _, split = key.partition(" (")
    return label, split.rstrip(")") or args.split


def expected_minutes(args):
    """{(label, split): mean wall time in minutes of its records in --records}, to plan the runs left."""
    return {label_and_split(key, args): np.mean([run.wall_seconds for run in runs]) / 60
            for key, runs in finished(args).items()}


def summary(results):
    """{label: (mean, std or nan, seeds)} of val mIoU in %."""
    out = {}
    for label, runs in results.items():
        mious = 100 * np.array([run.metrics["miou"] for run in runs])
        out[label] = (mious.mean(), np.std(mious, ddof=1) if len(mious) > 1 else float("nan"),
                      [run.seed for run in runs])
    return out


def tables(args):
    """The benchmark's markdown, from every record in --records: mean +- std per method; its gain over
    SupOnly paired by seed (mean +- std over the seeds both ran) and the share of the gap to full
    labels it closes on those seeds; the variants with their settings; one row per run; the mean
    per-class IoU."""
    results = finished(args)
    stats = summary(results)
    full = stats.get("suponly (full)")
    supervised = {run.seed: 100 * run.metrics["miou"] for run in results.get("suponly", [])}
    methods = registered_methods()
    where = os.path.join(os.path.basename(os.path.dirname(args.records)), os.path.basename(args.records))

    def row(label, runs):
        mean, std, seeds = stats[label]
        split = label_and_split(label, args)[1]
        delta = closed = "-"
        paired = {run.seed: 100 * run.metrics["miou"] for run in runs if run.seed in supervised}
        if paired and label != "suponly" and split == args.split:
            # Paired by seed (a seed fixes the labeled images): the method against SupOnly on its seeds.
            gains = np.array([miou - supervised[seed] for seed, miou in paired.items()])
            delta = f"{gains.mean():+.2f}" + (f" +- {np.std(gains, ddof=1):.2f}" if len(gains) > 1 else "")
            if full:
                baseline = np.mean([supervised[seed] for seed in paired])
                closed = f"{100 * gains.mean() / (full[0] - baseline):.0f} %"
        std_text = "-" if np.isnan(std) else f"{std:.2f}"
        return (f"**{mean:.2f} +- {std_text}** | {','.join(map(str, seeds))} | {delta} | {closed} "
                f"| {np.mean([run.wall_seconds for run in runs]) / 60:.1f} min |"), split

    lines = [f"{args.dataset}, split {args.split}, val mIoU (%); records in `{where}`.",
             "", "| method | split | val mIoU, mean +- std | seeds | vs SupOnly, same seeds | gap closed "
             "| mean wall time |",
             "|---|---|---|---|---|---|---|"]
    variants = []
    for label, runs in results.items():
        text, split = row(label, runs)
        if label.split(" (")[0] in methods and (split in (args.split, "full")):
            lines.append(f"| {label.split(' (')[0]} | {split} | {text}")
        else:
            variants.append(f"| {label.split(' (')[0]} | `{settings(runs[0].command) or '-'}` | {split} | {text}")
    if variants:
        lines += ["", "Variants (the method's benchmark command plus the settings shown)", "",
                  "| variant | settings | split | val mIoU, mean +- std | seeds | vs SupOnly, same seeds | gap closed "
                  "| mean wall time |", "|---|---|---|---|---|---|---|---|"] + variants
    lines += ["", "| method | seed | stages (val mIoU) | val mIoU | wall time |", "|---|---|---|---|---|"]
    for label, runs in results.items():
        for run in runs:
            stages = [f"{name.split('_', 1)[0]}: {100 * s['miou']:.2f}"
                      for name, s in run.metrics.get("stages", {}).items() if "miou" in s]
            resumed = f" ({run.attempts} attempts)" if run.attempts > 1 else ""
            earlier = (f" (earlier run{'s' if len(run.earlier_mious) > 1 else ''} of this seed: "
                       f"{', '.join(f'{100 * m:.2f}' for m in run.earlier_mious)})" if run.earlier_mious else "")
            lines.append(f"| {label} | {run.seed} | {', '.join(stages) or '-'} | {100 * run.metrics['miou']:.2f}"
                         f"{earlier} | {run.wall_seconds / 60:.1f} min{resumed} |")
    if results:
        classes = list(next(iter(results.values()))[0].metrics["per_class_iou"])
        lines += ["", "Mean per-class IoU (%)", "", f"| method | {' | '.join(classes)} |",
                  f"|---|{'---|' * len(classes)}"]
        for label, runs in results.items():
            values = np.array([[np.nan if v is None else v for v in run.metrics["per_class_iou"].values()]
                               for run in runs])
            lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in np.nanmean(values, 0)) + " |")
    return "\n".join(lines) + "\n"


def figure(args, path):
    """Each method's val mIoU, one dot per seed, with lines at SupOnly on the split and on full labels.
    Returns the path, or None without matplotlib (an optional extra of the benchmarks)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = finished(args)
    stats = summary(results)
    on_split, methods = [label for label in results if " (" not in label], registered_methods()
    labels = [label for label in on_split if label in methods] or on_split  # the methods' rows
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 4.5, 3.6))
    for x, label in enumerate(labels):
        mious = [100 * run.metrics["miou"] for run in results[label]]
        ax.scatter([x] * len(mious), mious, s=28, color="C0", zorder=3)
        ax.plot([x - 0.25, x + 0.25], [np.mean(mious)] * 2, color="C0", lw=1.5)
    for key, name, style in (("suponly", f"SupOnly {args.split}", "--"), ("suponly (full)", "SupOnly full labels", ":")):
        if key in stats:
            ax.axhline(stats[key][0], color="grey", ls=style, lw=1, label=f"{name}: {stats[key][0]:.1f}")
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"{args.dataset} {args.split}: one dot per seed")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.08)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it hides no dot
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path


def write_tables(args):
    out = os.path.join(args.records, "results.md")
    os.makedirs(args.records, exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(tables(args))
    os.replace(out + ".tmp", out)
    figure(args, args.records.rstrip(os.sep) + ".png")
    return out


def main(argv=None):
    args = parse_args(argv)
    args.runs_dir, args.records = os.path.abspath(args.runs_dir), os.path.abspath(args.records)
    args.data_dir = args.data_dir and os.path.normpath(args.data_dir)
    todo = [r for r in plan(args) if not os.path.exists(record_path(args, r[0], r[2], r[3]))]
    if not args.table_only:
        todo = with_missing_teachers(args, todo)
    if todo and args.precision == "bf16" and not args.table_only and not args.dry_run:
        from tfsemiseg.training import native_bfloat16

        if native_bfloat16() is False:
            print("error: --precision=bf16: this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16); "
                  "TensorFlow would emulate it, many times slower than float32. Run with --precision=fp32 "
                  "(the records keep each run's command) or on a CPU with bfloat16.", file=sys.stderr)
            return 2
    print(f"{len([r for r in plan(args) if r not in todo])} runs finished, {len(todo)} to do", flush=True)
    if args.dry_run:
        minutes = expected_minutes(args)
        for label, method, split, seed, extra in todo:
            estimate = minutes.get((label, split))
            print(f"  [{'no record yet' if estimate is None else '~%.0f min' % estimate}]",
                  " ".join(command(args, method, split, seed, run_dir(args, label, split, seed), extra)[1:]))
        known = [minutes[(label, split)] for label, _, split, _, _ in todo if (label, split) in minutes]
        if todo:
            print(f"~{sum(known) / 60:.1f} h for the {len(known)} runs whose method has a record here "
                  f"(the mean of its records' wall times); {len(todo) - len(known)} without one", flush=True)
        return 0
    failed = []
    if not args.table_only:
        for label, method, split, seed, extra in todo:
            if takes_teacher(method) and not args.no_reuse_teacher and ("suponly", split, seed) in failed:
                print(f"{label} seed {seed}: skipped, its teacher (SupOnly seed {seed}) failed", flush=True)
                failed.append((label, split, seed))
                continue
            if execute(args, label, method, split, seed, extra) != 0:
                failed.append((label, split, seed))
            write_tables(args)
    print(f"tables: {write_tables(args)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

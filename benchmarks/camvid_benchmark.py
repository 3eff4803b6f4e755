"""The CamVid benchmark in one command: every method at one split over several seeds, resumable.

    python benchmarks/camvid_benchmark.py                                   # pretrained Lite0 setting, 1/8, seeds 0-2
    python benchmarks/camvid_benchmark.py --backbone=tiny --runs_dir=runs/benchmark/scratch   # from scratch

Each run is `scripts/train.py --method=M --dataset=camvid --split=S --seed=N` in
`<runs_dir>/<label>_<split>_seed<N>/` (log beside it). Runs go seed by seed (seed 0 of every
method first), so a partial benchmark already compares all methods. A finished run leaves a
small record, `<records>/<label>_<split>_seed<N>.json` (its metrics, command and wall time),
meant to be committed: a run with a record is skipped, on this machine or a fresh one. An
interrupted run resumes where train.py left it (its stages and backups), so the command can be
stopped and run again. The wall time of every attempt is added up in `<run>/benchmark.json`,
which is brought up to date every minute while a run goes, so an attempt killed with this
command (the end of a session, say) still counts.

After every run the markdown tables (per run; mean +- std per method; mean per-class IoU)
are rewritten to `<records>/results.md`, ready to paste into RESULTS.md.

Run it from a checkout nobody edits meanwhile (e.g. `git worktree add ../bench HEAD`, then
`--records` pointing back into the working checkout): TensorFlow's AutoGraph reads a function's
source from disk when it first converts it, so a run that outlives an edit of `tfsemiseg/` can
convert the wrong lines and fail.

`--variant=LABEL=METHOD ARGS` adds a method with other settings, e.g.
`--variant="alss_d_lr_1e-4=alss --set d_lr=1e-4"`; `--upper_bound_seeds` adds SupOnly on the
full labels.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="suponly,alss,st,stpp,pseudoseg", help="comma-separated --method values")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=METHOD [train.py args] (repeatable)")
    parser.add_argument("--split", default="1_8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--upper_bound_seeds", default="0,1,2", help="seeds of SupOnly on --split=full ('' for none)")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "camvid"))
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "benchmark", "pretrained"))
    parser.add_argument("--records", default=os.path.join(ROOT, "benchmarks", "camvid_pretrained"),
                        help="folder of finished runs' records and results.md (commit it)")
    parser.add_argument("--backbone", default=None, help="e.g. tiny for the from-scratch setting")
    parser.add_argument("--set", action="append", default=[], help="name=value for every run (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs to do, run nothing")
    parser.add_argument("--table_only", action="store_true", help="rewrite the tables from finished runs")
    return parser.parse_args(argv)


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
    main = [[(m, m, args.split, seed, []) for m in args.methods.split(",") if m] for seed in seeds]
    upper = [("suponly", "suponly", "full", int(s), []) for s in args.upper_bound_seeds.split(",") if s]
    runs = main[0] + upper if main else upper
    for later in main[1:]:
        runs += later
    return runs + [(label, method, args.split, seed, extra) for seed in seeds for label, method, extra in variants]


def run_dir(args, label, split, seed):
    return os.path.join(args.runs_dir, f"{label}_{split}_seed{seed}")


def command(args, method, split, seed, workdir, extra):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--method={method}", "--dataset=camvid",
           f"--data_dir={args.data_dir}", f"--split={split}", f"--seed={seed}", f"--workdir={workdir}", "--verbose=2"]
    if args.backbone:
        cmd.append(f"--backbone={args.backbone}")
    for item in args.set:
        cmd += ["--set", item]
    return cmd + list(extra)


def record_path(args, label, split, seed):
    return os.path.join(args.records, f"{label}_{split}_seed{seed}.json")


HEARTBEAT_SECONDS = 60


def execute(args, label, method, split, seed, extra):
    """Run (or resume) one training run; when it has finished, write its record."""
    workdir = run_dir(args, label, split, seed)
    os.makedirs(workdir, exist_ok=True)
    cmd = command(args, method, split, seed, workdir, extra)
    attempts_path = os.path.join(workdir, "benchmark.json")
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
    _write_json(record_path(args, label, split, seed), {
        "label": label, "method": method, "split": split, "seed": seed,
        "command": " ".join(shlex.quote(os.path.relpath(c, ROOT) if os.path.isabs(c) else c) for c in cmd[1:]),
        "wall_seconds": round(sum(a["seconds"] for a in attempts), 1), "attempts": len(attempts), "metrics": metrics})
    return 0


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def finished(args):
    """{label: [(seed, metrics, wall seconds, attempts)]} of the runs that have a record."""
    results = {}
    for label, _method, split, seed, _extra in plan(args):
        path = record_path(args, label, split, seed)
        if os.path.exists(path):
            record = json.load(open(path))
            key = label if split == args.split else f"{label} ({split})"
            results.setdefault(key, []).append(
                (seed, record["metrics"], record["wall_seconds"], record["attempts"]))
    return results


def tables(args):
    """The benchmark's markdown: one row per run, then mean +- std and per-class IoU per method."""
    results = finished(args)
    lines = [f"Split {args.split}; records in `{os.path.relpath(args.records, ROOT)}`.", "",
             "| method | seed | stages (val mIoU) | val mIoU | wall time |", "|---|---|---|---|---|"]
    for label, runs in results.items():
        for seed, metrics, wall, attempts in runs:
            stages = [f"{name.split('_', 1)[0]}: {100 * s['miou']:.2f}"
                      for name, s in metrics.get("stages", {}).items() if "miou" in s]
            resumed = f" ({attempts} attempts)" if attempts > 1 else ""
            lines.append(f"| {label} | {seed} | {', '.join(stages) or '-'} | {100 * metrics['miou']:.2f} "
                         f"| {wall / 60:.1f} min{resumed} |")
    lines += ["", "| method | runs | val mIoU, mean +- std | mean wall time |", "|---|---|---|---|"]
    for label, runs in results.items():
        mious = 100 * np.array([m["miou"] for _, m, _, _ in runs])
        std = f"{np.std(mious, ddof=1):.2f}" if len(mious) > 1 else "-"
        lines.append(f"| {label} | {len(runs)} | **{mious.mean():.2f} +- {std}** "
                     f"| {np.mean([w for _, _, w, _ in runs]) / 60:.1f} min |")
    if results:
        classes = list(next(iter(results.values()))[0][1]["per_class_iou"])
        lines += ["", "Mean per-class IoU (%)", "", f"| method | {' | '.join(classes)} |",
                  f"|---|{'---|' * len(classes)}"]
        for label, runs in results.items():
            values = np.array([[np.nan if v is None else v for v in m["per_class_iou"].values()] for _, m, _, _ in runs])
            lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in np.nanmean(values, 0)) + " |")
    return "\n".join(lines) + "\n"


def write_tables(args):
    out = os.path.join(args.records, "results.md")
    os.makedirs(args.records, exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(tables(args))
    os.replace(out + ".tmp", out)
    return out


def main(argv=None):
    args = parse_args(argv)
    args.runs_dir, args.records = os.path.abspath(args.runs_dir), os.path.abspath(args.records)
    args.data_dir = os.path.normpath(args.data_dir)
    todo = [r for r in plan(args) if not os.path.exists(record_path(args, r[0], r[2], r[3]))]
    print(f"{len(plan(args)) - len(todo)} runs finished, {len(todo)} to do", flush=True)
    if args.dry_run:
        for label, method, split, seed, extra in todo:
            print(" ", " ".join(command(args, method, split, seed, run_dir(args, label, split, seed), extra)[1:]))
        return 0
    failures = 0
    if not args.table_only:
        for label, method, split, seed, extra in todo:
            failures += execute(args, label, method, split, seed, extra) != 0
            write_tables(args)
    print(f"tables: {write_tables(args)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

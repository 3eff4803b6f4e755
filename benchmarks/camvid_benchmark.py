"""The CamVid benchmark in one command: every method at one split over several seeds, resumable.

    python benchmarks/camvid_benchmark.py                                   # pretrained Lite0 setting, 1/8, seeds 0-2
    python benchmarks/camvid_benchmark.py --backbone=tiny --runs_dir=runs/benchmark/scratch   # from scratch

Each run is `scripts/train.py --method=M --dataset=camvid --split=S --seed=N` in
`<runs_dir>/<label>_<split>_seed<N>/` (log beside it). Runs go seed by seed (seed 0 of every
method first), so a partial benchmark already compares all methods. A run whose metrics.json
exists is skipped; an interrupted one resumes where train.py left it (its stages and backups),
so the command can be stopped and run again, in the same session or a later one. The wall time
of every attempt is added up in `<run>/benchmark.json`.

After every run the markdown tables (per run; mean +- std per method; mean per-class IoU)
are rewritten to `--out`, ready to paste into RESULTS.md.

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
    parser.add_argument("--methods", default="suponly,alss,st,stpp", help="comma-separated --method values")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=METHOD [train.py args] (repeatable)")
    parser.add_argument("--split", default="1_8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--upper_bound_seeds", default="0", help="seeds of SupOnly on --split=full ('' for none)")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "camvid"))
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "benchmark", "pretrained"))
    parser.add_argument("--out", default=None, help="markdown file (default <runs_dir>/results.md)")
    parser.add_argument("--backbone", default=None, help="e.g. tiny for the from-scratch setting")
    parser.add_argument("--set", action="append", default=[], help="name=value for every run (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs to do, run nothing")
    parser.add_argument("--table_only", action="store_true", help="rewrite the tables from finished runs")
    return parser.parse_args(argv)


def plan(args):
    """[(label, method, split, seed, extra args)] in the order they run: seed by seed."""
    variants = [(m, m, []) for m in args.methods.split(",") if m]
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        words = shlex.split(rest)
        if not label or not words:
            raise SystemExit(f"--variant={spec!r}: expected LABEL=METHOD [args]")
        variants.append((label, words[0], words[1:]))
    runs = [(label, method, args.split, int(seed), extra)
            for seed in args.seeds.split(",") if seed for label, method, extra in variants]
    runs += [("suponly", "suponly", "full", int(seed), []) for seed in args.upper_bound_seeds.split(",") if seed]
    return runs


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


def execute(args, label, method, split, seed, extra):
    workdir = run_dir(args, label, split, seed)
    os.makedirs(workdir, exist_ok=True)
    cmd = command(args, method, split, seed, workdir, extra)
    record_path = os.path.join(workdir, "benchmark.json")
    record = json.load(open(record_path)) if os.path.exists(record_path) else {"attempts": []}
    print(f"[{time.strftime('%H:%M:%S')}] {label} split={split} seed={seed}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(workdir + ".log", "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    record["attempts"].append({"seconds": round(time.time() - start, 1), "exit": code})
    record.update(command=" ".join(shlex.quote(c) for c in cmd[1:]), label=label)
    with open(record_path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(record_path + ".tmp", record_path)
    if code != 0:
        print(f"  failed with exit {code}; see {workdir}.log", flush=True)
    return code


def finished(args):
    """{label: [(seed, split, metrics, wall seconds, attempts)]} of the runs that have metrics.json."""
    results = {}
    for label, _method, split, seed, _extra in plan(args):
        workdir = run_dir(args, label, split, seed)
        metrics_path = os.path.join(workdir, "metrics.json")
        if not os.path.exists(metrics_path):
            continue
        record_path = os.path.join(workdir, "benchmark.json")
        attempts = json.load(open(record_path))["attempts"] if os.path.exists(record_path) else []
        key = label if split == args.split else f"{label} ({split})"
        results.setdefault(key, []).append(
            (seed, json.load(open(metrics_path)), sum(a["seconds"] for a in attempts), len(attempts)))
    return results


def tables(args):
    """The benchmark's markdown: one row per run, then mean +- std and per-class IoU per method."""
    results = finished(args)
    lines = [f"Runs in `{os.path.relpath(args.runs_dir, ROOT)}`, split {args.split}.", "",
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
    out = args.out or os.path.join(args.runs_dir, "results.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write(tables(args))
    os.replace(out + ".tmp", out)
    return out


def main(argv=None):
    args = parse_args(argv)
    args.runs_dir = os.path.abspath(args.runs_dir)
    todo = [r for r in plan(args) if not os.path.exists(os.path.join(run_dir(args, r[0], r[2], r[3]), "metrics.json"))]
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

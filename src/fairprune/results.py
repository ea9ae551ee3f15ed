"""Committed results: collect a finished run's metrics into `results/<name>/` and print the tables
the docs quote from them (the docs quote only what `table` prints).

    python -m fairprune.results collect NAME [--project DIR] [--config FILE ...]
    python -m fairprune.results table NAME
    python -m fairprune.results validation NAME

`collect` copies `metrics/eval/*.json` (per-model, per-group test metrics; nothing from which an
image could be recovered) and writes `manifest.json` (params, git commit, data digest, machine,
stage wall times). `table` summarises per method and sparsity over seeds: mean and a 95 %
t-interval across seeds (it does not count the test split's own sampling error), each group's
change against its dense model, and whether a narrower gap than magnitude's came with the best-off
group below its dense accuracy (levelling down, never a fairness gain).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path("results")
BASELINE = "magnitude"


def collect(name: str, project: Path, configs: list[str], commit: str | None = None) -> Path:
    out = RESULTS / name
    if out.exists():
        shutil.rmtree(out)
    (out / "eval").mkdir(parents=True)
    for path in sorted((project / "metrics" / "eval").glob("*.json")):
        shutil.copy(path, out / "eval" / path.name)
    wall = {}
    for folder in ("train", "prune"):
        for path in sorted((project / "metrics" / folder).glob("*.json")):
            wall[f"{folder}/{path.stem}"] = json.loads(path.read_text()).get("wall_s")
    prepared = project / "data" / "prepared.pt"
    manifest = {
        "name": name, "configs": configs,
        "params": (project / "params.yaml").read_text(),
        "git_commit": commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                               text=True).stdout.strip(),
        "data_sha256": hashlib.sha256(prepared.read_bytes()).hexdigest() if prepared.exists() else None,
        "data_stats": json.loads((project / "data" / "stats.json").read_text()).get("n_per_split"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "wall_s": wall,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % t-interval across seeds (NaN with one seed)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def _fmt(mean: float, half: float, scale: float = 100.0) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean * scale:.1f}" + (f" ± {half * scale:.1f}" if np.isfinite(half) else "")


def load(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((RESULTS / name / "eval").glob("*.json"))]


def summarise(records: list[dict]) -> tuple[list[dict], list[str], dict]:
    dense = {r["seed"]: r for r in records if r["method"] == "dense"}
    groups = list(next(iter(dense.values()))["groups"])
    by_key = defaultdict(list)
    for r in records:
        if r["method"] != "dense":
            by_key[(r["method"], r["sparsity"])].append(r)
    best = {seed: max(groups, key=lambda g: d["groups"][g]["accuracy"]) for seed, d in dense.items()}
    rows = []
    for (method, sparsity), runs in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0] != BASELINE, kv[0][0])):
        runs = sorted(runs, key=lambda r: r["seed"])
        row = {"method": method, "sparsity": sparsity, "seeds": len(runs), "seed_list": [r["seed"] for r in runs],
               "gaps": [r["fairness"]["accuracy_gap"] for r in runs],
               "accuracy": _interval([r["accuracy"] for r in runs]),
               "accuracy_gap": _interval([r["fairness"]["accuracy_gap"] for r in runs]),
               "worst_excess_drop": _interval([r["fairness"]["worst_excess_drop"] for r in runs]),
               "best_group_change": _interval([r["groups"][best[r["seed"]]]["accuracy"]
                                               - dense[r["seed"]]["groups"][best[r["seed"]]]["accuracy"] for r in runs]),
               "group_change": {g: _interval([r["groups"][g]["accuracy"] - dense[r["seed"]]["groups"][g]["accuracy"]
                                              for r in runs]) for g in groups}}
        rows.append(row)
    dense_row = {"accuracy": _interval([d["accuracy"] for d in dense.values()]),
                 "accuracy_gap": _interval([d["fairness"]["accuracy_gap"] for d in dense.values()])}
    return rows, groups, dense_row


def verdict(row: dict, baseline: dict | None) -> str:
    """The method's accuracy gap against magnitude's at the same sparsity, paired by seed: narrower or
    wider only when the 95 % t-interval of the per-seed differences excludes 0; a narrower gap with the
    best-off group below its dense accuracy is levelling down."""
    if baseline is None or row["method"] == BASELINE:
        return ""
    by_seed = dict(zip(baseline["seed_list"], baseline["gaps"]))
    mean, half = _interval([gap - by_seed[seed] for seed, gap in zip(row["seed_list"], row["gaps"]) if seed in by_seed])
    if not np.isfinite(half) or abs(mean) <= half:
        return "no clear difference"
    if mean > 0:
        return "wider gap"
    best_mean, best_half = row["best_group_change"]
    return "narrower gap, levelling down" if np.isfinite(best_half) and best_mean + best_half < 0 else "narrower gap"


def table(name: str) -> str:
    rows, groups, dense = summarise(load(name))
    baselines = {r["sparsity"]: r for r in rows if r["method"] == BASELINE}
    seeds = max(r["seeds"] for r in rows)
    lines = [f"Test split, {seeds} seeds; mean ± half-width of a 95 % t-interval across seeds, in points "
             f"(the test split's own sampling error is not counted). Dense: accuracy "
             f"{_fmt(*dense['accuracy'])}, accuracy gap {_fmt(*dense['accuracy_gap'])}.", "",
             "| method | sparsity | accuracy | accuracy gap | worst excess drop ψ | best-off group vs dense "
             "| gap vs magnitude (paired by seed) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:g} | {_fmt(*row['accuracy'])} | "
                     f"{_fmt(*row['accuracy_gap'])} | {_fmt(*row['worst_excess_drop'])} | "
                     f"{_fmt(*row['best_group_change'])} | {verdict(row, baselines.get(row['sparsity']))} |")
    lines += ["", "Each group's accuracy change against the dense model of the same seed (points, mean over seeds):",
              "", "| method | sparsity | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:g} | "
                     + " | ".join(f"{row['group_change'][g][0] * 100:+.1f}" for g in groups) + " |")
    target = [r for r in rows if r["sparsity"] in baselines and r["method"] != BASELINE
              and r["worst_excess_drop"][0] <= 0.01
              and r["accuracy"][0] >= baselines[r["sparsity"]]["accuracy"][0] - 0.005]
    lines += ["", "Target (ψ ≤ 0.01 on test with accuracy within 0.5 point of magnitude, means over seeds): "
              + (", ".join(f"{r['method']} at {r['sparsity']:g}" for r in target) if target else "met by no method")
              + ". Magnitude itself: " + ", ".join(f"ψ = {_fmt(*b['worst_excess_drop'])} at {s:g}"
                                                   for s, b in sorted(baselines.items()))
              + " (where it is already within 1 point, the target says little)."]
    return "\n".join(lines) + "\n"


def validation(name: str) -> str:
    """Final-epoch validation accuracy, gap and worst group per variant folder of results/NAME (prune
    metrics), for choices made on the validation split."""
    lines = ["| variant | method | seeds | val accuracy | val accuracy gap | worst group |", "|---|---|---|---|---|---|"]
    for variant in sorted(p for p in (RESULTS / name).iterdir() if p.is_dir()):
        runs = defaultdict(list)
        for path in sorted(variant.glob("*.json")):
            record = json.loads(path.read_text())
            runs[record["method"]].append(record["history"][-1])
        for method, finals in sorted(runs.items()):
            groups = [[v for k, v in f.items() if k.startswith("val_acc/")] for f in finals]
            lines.append(f"| {variant.name} | {method} | {len(finals)} | {_fmt(*_interval([f['val_acc'] for f in finals]))} | "
                         f"{_fmt(*_interval([max(g) - min(g) for g in groups]))} | {_fmt(*_interval([min(g) for g in groups]))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fairprune.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy a finished run's metrics into results/NAME")
    c.add_argument("name")
    c.add_argument("--project", default=".", type=Path)
    c.add_argument("--config", action="append", default=[], help="the named configurations it applied")
    c.add_argument("--commit", help="the fairprune commit the run's code came from (default: this checkout's HEAD)")
    t = sub.add_parser("table", help="print the tables the docs quote")
    t.add_argument("name")
    v = sub.add_parser("validation", help="print a validation-split comparison (results/NAME/<variant>/*.json)")
    v.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "collect":
        if not (args.project / "metrics" / "eval").is_dir():
            print(f"error: {args.project}/metrics/eval is missing; run `dvc repro evaluate` there first", file=sys.stderr)
            return 2
        print(f"collected into {collect(args.name, args.project, args.config, args.commit)}")
        return 0
    if args.command == "validation":
        print(validation(args.name), end="")
        return 0
    if not (RESULTS / args.name / "eval").is_dir():
        print(f"error: results/{args.name} has no eval/ folder; collect a run first", file=sys.stderr)
        return 2
    print(table(args.name), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

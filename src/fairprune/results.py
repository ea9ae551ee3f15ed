"""Committed results: collect a finished run's metrics into `results/<name>/` and print the tables
the docs quote from them (the docs quote only what `table` prints).

    python -m fairprune.results collect NAME [--project DIR] [--config FILE ...]
    python -m fairprune.results table NAME
    python -m fairprune.results validation NAME
    python -m fairprune.results docs      (rewrite every generated table in docs/*.md)

`collect` copies `metrics/eval/*.json` (per-model, per-group test metrics; nothing from which an
image could be recovered) and writes `manifest.json` (params, git commit, data digest, machine,
stage wall times). `table` summarises per method and sparsity over seeds (fairprune.statistics):
means with 95 % hierarchical-bootstrap intervals (seeds, then test samples within each group), each
group's change against its dense model, comparisons with magnitude paired by seed and test sample
and Holm-corrected, "within 0.5 point" as a non-inferiority test, and whether a narrower gap than
magnitude's came with the best-off group below its dense accuracy (levelling down, never a
fairness gain).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from fairprune.statistics import Bootstrap, Estimate, holm

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
    """Mean and the half-width of a 95 % t-interval across seeds (NaN with one seed): for validation
    summaries, where each run is one number."""
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


def _ci(estimate: Estimate, signed: bool = False) -> str:
    low, high = estimate.interval()
    form = "{:+.1f}" if signed else "{:.1f}"
    return f"{form.format(estimate.value * 100)} [{form.format(low * 100)}, {form.format(high * 100)}]"


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.0005 else f"p = {value:.3f}"


def load(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((RESULTS / name / "eval").glob("*.json"))]


ACCURACY_MARGIN = 0.005  # "accuracy within 0.5 point of magnitude" (the fair-methods issue's target)
PSI_TARGET = 0.01


def verdict(gap_diff: Estimate, p_adjusted: float, best_change: Estimate, worst_lift: Estimate) -> str:
    """A gap narrower or wider than magnitude's only when the Holm-adjusted paired test says so. A
    narrower gap with the best-off group's accuracy below its dense value (interval below 0) is
    levelling down, never a fairness gain; when the worst-off group also gains against magnitude's
    model (interval above 0), both happened and the verdict says so."""
    if p_adjusted >= 0.05:
        return "no significant difference"
    if gap_diff.value > 0:
        return "wider gap"
    if best_change.interval()[1] >= 0:
        return "narrower gap"
    if worst_lift.interval()[0] > 0:
        return (f"narrower gap: worst-off group {worst_lift.value * 100:+.1f} points against magnitude, "
                f"best-off below dense (partly levelling down)")
    return "narrower gap, levelling down"


def table(name: str, n_boot: int = 2000) -> str:
    records = load(name)
    boot = Bootstrap(records, n_boot=n_boot)
    keys = sorted({(r["method"], r["sparsity"]) for r in records if r["method"] != "dense"},
                  key=lambda k: (k[1], k[0] != BASELINE, k[0]))
    rows, tests = [], []
    for method, sparsity in keys:
        row = {"method": method, "sparsity": sparsity,
               **{m: boot.metric(method, sparsity, m) for m in
                  ("accuracy", "accuracy_gap", "worst_excess_drop", "best_group_change")},
               "groups": {g: boot.metric(method, sparsity, "group_change", g) for g in boot.groups}}
        if method != BASELINE and (BASELINE, sparsity) in keys:
            row["gap_diff"] = row["accuracy_gap"] - boot.metric(BASELINE, sparsity, "accuracy_gap")
            row["accuracy_diff"] = row["accuracy"] - boot.metric(BASELINE, sparsity, "accuracy")
            row["worst_lift"] = (boot.metric(method, sparsity, "worst_group_change")
                                 - boot.metric(BASELINE, sparsity, "worst_group_change"))
            tests += [(len(rows), "gap", row["gap_diff"].p_two_sided()),
                      (len(rows), "accuracy", row["accuracy_diff"].p_non_inferior(ACCURACY_MARGIN))]
        rows.append(row)
    for (i, kind, _), adjusted in zip(tests, holm([p for *_, p in tests])):
        rows[i][f"p_{kind}"] = adjusted
    dense_acc = boot.metric("dense", 0.0, "accuracy") if ("dense", 0.0) in {k[:2] for k in boot.records} else None
    smallest, detectable = boot.smallest_detectable_difference()
    seeds = len(boot.seeds)
    lines = [f"Test split, {seeds} seed{'s' * (seeds > 1)}; test samples per group: "
             + ", ".join(f"{g} {n}" for g, n in zip(boot.groups, boot.n))
             + f". Mean over seeds [95 % hierarchical-bootstrap interval: seeds, then test samples within each "
             f"group, {n_boot} replicates], in points. Against magnitude at the same sparsity: paired by seed and "
             f"test sample, p-values Holm-adjusted over this table's {len(tests)} tests. A group's accuracy drop "
             f"under {detectable * 100:.1f} points ({smallest}, {boot.n[boot.groups.index(smallest)]} test samples) "
             f"is below what one comparison detects with 80 % power."
             + (f" Dense: accuracy {_ci(dense_acc)}, accuracy gap {_ci(boot.metric('dense', 0.0, 'accuracy_gap'))}."
                if dense_acc is not None else ""), "",
             "| method | sparsity | accuracy | accuracy gap | worst excess drop ψ | best-off group vs dense "
             "| gap vs magnitude | accuracy within 0.5 point of magnitude |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "gap_diff" in row:
            against = (f"{_ci(row['gap_diff'], True)}, {_p(row['p_gap'])}: "
                       f"{verdict(row['gap_diff'], row['p_gap'], row['best_group_change'], row['worst_lift'])}")
            within = f"{'yes' if row['p_accuracy'] < 0.05 else 'not shown'} ({_p(row['p_accuracy'])})"
        else:
            against = within = ""
        lines.append(f"| {row['method']} | {row['sparsity']:g} | {_ci(row['accuracy'])} | {_ci(row['accuracy_gap'])} | "
                     f"{_ci(row['worst_excess_drop'], True)} | {_ci(row['best_group_change'], True)} | {against} | "
                     f"{within} |")
    lines += ["", "Each group's accuracy change against the dense model of the same seed (points, mean over seeds "
              "[95 % interval]):", "", "| method | sparsity | " + " | ".join(boot.groups) + " |",
              "|---|---|" + "---|" * len(boot.groups)]
    for row in rows:
        lines.append(f"| {row['method']} | {row['sparsity']:g} | "
                     + " | ".join(_ci(row["groups"][g], True) for g in boot.groups) + " |")
    in_mean = [r for r in rows if "accuracy_diff" in r and r["worst_excess_drop"].value <= PSI_TARGET
               and r["accuracy_diff"].value >= -ACCURACY_MARGIN]
    shown = [r for r in in_mean if r["worst_excess_drop"].interval()[1] <= PSI_TARGET and r["p_accuracy"] < 0.05]
    baselines = [r for r in rows if r["method"] == BASELINE]
    lines += ["", f"Target (ψ ≤ {PSI_TARGET:g} on test with accuracy within 0.5 point of magnitude): in the mean, "
              + (", ".join(f"{r['method']} at {r['sparsity']:g}" for r in in_mean) if in_mean else "no method")
              + "; with ψ's interval below the target and non-inferiority shown, "
              + (", ".join(f"{r['method']} at {r['sparsity']:g}" for r in shown) if shown else "no method")
              + ". Magnitude itself: " + ", ".join(f"ψ = {_ci(b['worst_excess_drop'], True)} at {b['sparsity']:g}"
                                                   for b in baselines)
              + (" (where magnitude already meets it, the target says little)."
                 if any(b["worst_excess_drop"].value <= PSI_TARGET for b in baselines) else ".")]
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


DOC_BLOCKS = {"table": table, "validation": lambda name: validation(name)}
BLOCK = re.compile(r"<!-- (table|validation): (\S+) -->\n(.*?)<!-- end \1 -->", re.S)


def regenerate_docs(docs: Path = Path("docs")) -> list[Path]:
    """Rewrite every generated block in docs/*.md (`<!-- table: NAME -->` ... `<!-- end table -->`,
    likewise `validation`) from the committed results; the pages whose text changed."""
    changed = []
    for page in sorted(docs.glob("*.md")):
        text = page.read_text()
        new = BLOCK.sub(lambda m: f"<!-- {m[1]}: {m[2]} -->\n{DOC_BLOCKS[m[1]](m[2])}<!-- end {m[1]} -->", text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


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
    sub.add_parser("docs", help="regenerate every generated table in docs/*.md from results/")
    args = parser.parse_args(argv)
    if args.command == "docs":
        changed = regenerate_docs()
        print("regenerated " + (", ".join(str(p) for p in changed) if changed else "nothing (every table is current)"))
        return 0
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

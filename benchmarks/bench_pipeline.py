"""Wall time of the default pipeline from a fresh copy, and of a second `dvc repro` with nothing changed.

Targets: first run within 600 s on a 2-core CPU (installing excluded); no-op rerun under 10 s.
With `--baseline REF` it also runs the pipeline of an earlier commit (`git archive REF`) in the same
process, before this tree's, each copy importing its own `src/`, and prints the ratio of the two wall
times and whether every test metric is identical (the start-up work of issue 26: same numbers, less
time).

    python benchmarks/bench_pipeline.py [--baseline 8c21c69]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from project_copy import checkout, environment


def timed(cmd, cwd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def test_metrics(work: Path) -> dict:
    """Every evaluation record's numbers (not its timings)."""
    keep = ("accuracy", "loss", "groups", "fairness")
    return {p.name: {k: json.loads(p.read_text()).get(k) for k in keep}
            for p in sorted((work / "metrics" / "eval").glob("*.json"))}


def hessian_tops(work: Path) -> dict:
    """Every Hessian top eigenvalue of the diagnose stage (groups and population), by file."""
    tops = {}
    for path in sorted((work / "metrics" / "diagnose").glob("*.json")):
        record = json.loads(path.read_text())
        tops[path.name] = [g.get("hessian_top") for g in record["groups"]] + [record["population"]["hessian_top"]]
    return tops


def largest_relative_difference(a: dict, b: dict) -> float:
    pairs = [(x, y) for k in a.keys() & b.keys() for x, y in zip(a[k], b[k]) if x is not None and y is not None]
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in pairs), default=float("nan"))


def run_pipeline(work: Path) -> tuple[float, float, dict, str]:
    env = environment(work)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=work, env=env, check=True)
    first = timed([sys.executable, "-m", "fairprune.tracking"], work, env) + timed(["dvc", "repro"], work, env)
    second = timed(["dvc", "repro"], work, env)
    stages = (work / "reports" / "README.md").read_text().split("## Stage wall time (seconds)")[1].split("Gaps")[0]
    return first, second, (test_metrics(work), hessian_tops(work)), stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a git ref whose pipeline runs first, for the ratio")
    args = parser.parse_args()
    runs = {}
    for label, ref in ([("baseline " + args.baseline, args.baseline)] if args.baseline else []) + [("this tree", None)]:
        with tempfile.TemporaryDirectory() as tmp:
            checkout(ref, Path(tmp))
            runs[label] = run_pipeline(Path(tmp))
        first, second, _, stages = runs[label]
        print(f"[{label}] default pipeline, fresh copy   {first:7.1f} s   ({first / 600:.2f} of the 600 s budget)")
        print(f"[{label}] second dvc repro, no change    {second:7.1f} s   ({second / 10:.2f} of the 10 s budget)")
        print(stages)
    if args.baseline:
        (base, _, base_metrics, _), (now, _, now_metrics, _) = runs.values()
        print(f"this tree / baseline {args.baseline}: {now / base:.2f}x the wall time (target <= 0.5x); test metrics "
              + ("identical" if base_metrics[0] == now_metrics[0] else "DIFFER: " + ", ".join(
                  k for k in base_metrics[0].keys() | now_metrics[0].keys()
                  if base_metrics[0].get(k) != now_metrics[0].get(k))))
        print(f"diagnose: largest relative difference of a Hessian top eigenvalue, this tree vs baseline: "
              f"{largest_relative_difference(now_metrics[1], base_metrics[1]):.2e}")


if __name__ == "__main__":
    main()

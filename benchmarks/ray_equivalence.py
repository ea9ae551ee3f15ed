"""Does running the pipeline through Ray change a number? One configuration, three fresh copies of the
project, in this one run: a plain `dvc repro`, `python -m fairprune.parallel --jobs 2` on a local Ray
instance, and the same driver on a two-node Ray cluster (`ray.cluster_utils.Cluster`: a head that runs
nothing and two nodes of one CPU each, on this machine). The plain run uses the torch threads of a Ray stage
(`run.cpus_per_stage`, OMP_NUM_THREADS). Every metrics file is compared value by value
(timings, run ids and MLflow model ids left out), the outputs' digests in dvc.lock too, and `dvc status`
must be clean after each Ray run.

    python benchmarks/ray_equivalence.py [--config configs/tran_table1_digits.yaml] [--keep DIR] [TARGET]

Exits 1 when a number differs. The default configuration reproduces the whole pipeline (what `make run`
does); a named one its report (what `make run CONFIG=...` does).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from project_copy import make_copy, run_timed

VOLATILE = {"wall_s", "prune_s", "train_s", "latency_ms", "speedup", "mlflow_model_id", "run"}
# outputs whose bytes carry a timing or a run id; their numbers are compared through the metrics instead
VOLATILE_OUTS = ("reports", "metrics", "mlruns", "data/method_params", "tune")


def numbers(work: Path) -> dict:
    """Every metrics file's content without its volatile keys."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return {str(p.relative_to(work)): strip(json.loads(p.read_text())) for p in sorted((work / "metrics").rglob("*.json"))}


def digests(work: Path) -> dict:
    """The md5 of every output in dvc.lock that is not a report of timings or ids (models, data)."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in lock.values() for out in stage.get("outs", [])
            if not out["path"].startswith(VOLATILE_OUTS)}


def stage_threads(work: Path) -> str:
    import math

    cpus = (yaml.safe_load((work / "params.yaml").read_text()).get("run") or {}).get("cpus_per_stage", 1)
    return str(max(1, math.ceil(cpus)))


def run(cmd: list[str], work: Path, env: dict) -> None:
    seconds, out = run_timed(cmd, work, env)
    print(f"  {' '.join(cmd)}: {seconds:.0f} s, last line: {(out.strip().splitlines() or [''])[-1]}", flush=True)


def dvc_clean(work: Path, env: dict, targets: list[str]) -> bool:
    out = subprocess.run(["dvc", "status", "--json", *targets], cwd=work, env=env, capture_output=True, text=True)
    return set(json.loads(out.stdout or "{}")) <= {"validate"}  # validate always runs: it checks the machine


def compare(name: str, reference: tuple[dict, dict], other: tuple[dict, dict]) -> bool:
    (ref_numbers, ref_digests), (numbers_, digests_) = reference, other
    differing = sorted(k for k in ref_numbers.keys() | numbers_.keys() if ref_numbers.get(k) != numbers_.get(k))
    outs = sorted(k for k in ref_digests.keys() | digests_.keys() if ref_digests.get(k) != digests_.get(k))
    print(f"{name}: {len(numbers_)} metrics files, {len(differing)} differ from plain dvc repro"
          + (f" ({', '.join(differing[:5])})" if differing else "")
          + f"; {len(digests_)} model and data outputs, {len(outs)} with another digest"
          + (f" ({', '.join(outs[:5])})" if outs else ""), flush=True)
    return not differing and not outs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a named configuration (default: params.yaml as it is)")
    parser.add_argument("--keep", type=Path, help="copy the plain run's project here afterwards (its MLflow store "
                                                   "is a real run, e.g. for docs/screenshots/take.py)")
    parser.add_argument("target", nargs="?", help="stage to reproduce (default: all, or `report` with --config)")
    args = parser.parse_args()
    targets = [args.target or "report"] if args.config or args.target else []
    print(f"configuration: {args.config or 'the default params.yaml'}; target: {targets or 'the whole pipeline'}; "
          f"{os.cpu_count()} cores", flush=True)
    results, clean = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("plain dvc repro", "local Ray, --jobs 2", "two-node Ray cluster"):
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            env = make_copy(work, config=args.config)
            if name.startswith("plain"):
                # at the thread count of a Ray stage (run.cpus_per_stage): another count reorders the
                # floating-point reductions and changes the last bits (docs/pipeline.md, Reproducible bytes)
                run(["dvc", "repro", *targets], work, {**env, "OMP_NUM_THREADS": stage_threads(work)})
            elif name.startswith("local"):
                run([sys.executable, "-m", "fairprune.parallel", "--jobs", "2", *targets], work, env)
            else:
                from ray.cluster_utils import Cluster

                os.environ["RAY_worker_niceness"] = "0"  # the nodes' workers at normal priority (docs/scale-out.md)
                cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
                try:
                    for _ in range(2):
                        cluster.add_node(num_cpus=1)
                    cluster.wait_for_nodes()
                    run([sys.executable, "-m", "fairprune.parallel", *targets], work,
                        {**env, "RAY_ADDRESS": cluster.address})
                finally:
                    cluster.shutdown()
            if not name.startswith("plain"):
                status = dvc_clean(work, env, targets)
                print(f"{name}: dvc status {'clean' if status else 'NOT clean'}", flush=True)
                clean &= status
            results[name] = (numbers(work), digests(work))
            if name.startswith("plain") and args.keep:
                shutil.copytree(work, args.keep, symlinks=True)
    same = [compare(name, results["plain dvc repro"], r) for name, r in results.items() if not name.startswith("plain")]
    verdict = all(same) and clean
    print("identical: every metric and model equal to plain dvc repro's" if verdict else "NOT identical", flush=True)
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())

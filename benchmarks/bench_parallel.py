"""The Ray scheduler's costs (fairprune.parallel), as ratios measured in this one run.

1. Scheduling overhead per stage: the same short command (`python -c pass`) run directly with
   subprocess and as a Ray task like a stage (alternated, median of --repeats).
2. Throughput of the default matrix up to the prune stages: `--jobs 2` against `--jobs 1`, each in a
   fresh copy of the project (same machine, one after the other).

    python benchmarks/bench_parallel.py [--repeats 20] [--skip-matrix]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from project_copy import make_copy


def overhead(repeats: int) -> None:
    import ray

    from fairprune.parallel import run_stage

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    task = ray.remote(run_stage).options(num_cpus=1)
    cmd, env = f"{sys.executable} -c pass", {"PATH": os.environ["PATH"]}
    with tempfile.TemporaryDirectory() as tmp:
        log = str(Path(tmp) / "log")
        ray.get(task.remote(cmd, tmp, env, "bench", log))  # a warm worker, as in a long run
        direct, as_task = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.call(cmd, shell=True, cwd=tmp, env=env)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            ray.get(task.remote(cmd, tmp, env, "bench", log))
            as_task.append(time.perf_counter() - start)
    ray.shutdown()
    d, t = statistics.median(direct), statistics.median(as_task)
    print(f"`python -c pass` directly {d * 1000:.0f} ms, as a Ray task {t * 1000:.0f} ms: "
          f"{(t - d) * 1000:.0f} ms of scheduling per stage ({t / d:.2f}x; median of {repeats}, alternated)")


def matrix(jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = make_copy(work)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fairprune.parallel", "--jobs", str(jobs), "prune"], cwd=work, env=env,
                       check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    overhead(args.repeats)
    if not args.skip_matrix:
        one, two = matrix(1), matrix(2)
        print(f"default matrix up to prune (validate, prepare, 3 dense, 15 pruned): --jobs 1 {one:.0f} s, "
              f"--jobs 2 {two:.0f} s: {one / two:.2f}x the throughput on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

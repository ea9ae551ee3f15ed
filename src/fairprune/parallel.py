"""Run the DVC pipeline's stages in parallel and record each in dvc.lock as it finishes.

`dvc repro` runs one stage at a time (DVC has no parallel repro). On a GPU runner one ResNet-10
fine-tuning leaves most of the device idle, so a paper-scale method x sparsity x seed matrix
takes hours that way. This starts every stage whose upstream stages are done as soon as a worker
is free, each as its own process running the stage's `cmd`. Each finished stage is committed at
once (`dvc commit`), so `dvc status` and a later `dvc repro` treat it as if `dvc repro` had run
it, and an interrupted run keeps what finished. Stages that are up to date are skipped.

    python -m fairprune.parallel --jobs 12 [STAGE ...]        (make run-parallel JOBS=12)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

LOG_DIR = Path(".dvc") / "tmp" / "parallel"


def run_stage(stage, env: dict[str, str]) -> tuple[int, float, Path]:
    log = LOG_DIR / (stage.addressing.replace("/", "_").replace("@", "-") + ".log")
    began = time.perf_counter()
    with open(log, "w") as out:
        # as dvc repro does: matrix stages read their item from DVC_STAGE (fairprune.stage)
        code = subprocess.call(stage.cmd, shell=True, cwd=stage.wdir, env={**env, "DVC_STAGE": stage.addressing},
                               stdout=out, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - began, log


def tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:]


def main(argv: list[str] | None = None) -> int:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages (or matrix groups such as `prune`) with their upstream; "
                                                   "default: the whole pipeline")
    parser.add_argument("--jobs", type=int, default=2, help="stages running at once")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per stage process (OMP_NUM_THREADS); default: cores / jobs")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs {args.jobs} is invalid; give at least 1 (stages running at once)", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}

    repo = Repo()
    graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
    try:
        chosen = {s for t in (args.targets or [None]) for s in repo.stage.collect(t, with_deps=True)}
    except DvcException as exc:  # it names the unknown stage
        print(f"error: {exc}; list the stages with `dvc stage list`", file=sys.stderr)
        return 2
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    waiting, done, failed, ran = set(chosen), set(), [], 0
    running: dict[Future, object] = {}
    total, began = len(chosen), time.perf_counter()

    def report(stage, what: str) -> None:
        finished = len(done) + len(failed)
        print(f"[{finished}/{total} {time.perf_counter() - began:7.1f}s] {stage.addressing}: {what}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        while waiting or running:
            skipped = True
            while skipped:  # an up-to-date stage can make its downstream ready at once
                skipped = False
                for stage in [s for s in waiting if all(d in done or d not in chosen for d in graph.successors(s))]:
                    waiting.discard(stage)
                    with repo.lock:
                        changed = stage.changed()
                    if changed:
                        running[pool.submit(run_stage, stage, env)] = stage
                    else:
                        done.add(stage)
                        skipped = True
                        report(stage, "up to date")
            if not running:
                break  # what is left waits on a failed stage
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                code, seconds, log = future.result()
                if code != 0:
                    failed.append(stage)
                    report(stage, f"FAILED (exit {code}) after {seconds:.1f}s; log {log}\n{tail(log)}")
                    continue
                try:
                    repo.commit(stage.addressing, force=True)
                except DvcException as exc:  # e.g. the command exited 0 without writing a declared output
                    failed.append(stage)
                    report(stage, f"FAILED to commit: {exc}; log {log}")
                    continue
                done.add(stage)
                ran += 1
                report(stage, f"ran in {seconds:.1f}s, committed")
    blocked = sorted(s.addressing for s in waiting)
    print(f"parallel: {ran} ran, {len(done) - ran} up to date, {len(failed)} failed"
          + (f" ({', '.join(s.addressing for s in failed)})" if failed else "")
          + (f", {len(blocked)} not run because an upstream stage failed" if blocked else "")
          + f", in {time.perf_counter() - began:.1f}s with {args.jobs} jobs x {threads} threads")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the running stages got the same signal and stop at their checkpoints
        print("interrupted: the finished stages are committed; rerun to go on", file=sys.stderr)
        sys.exit(130)

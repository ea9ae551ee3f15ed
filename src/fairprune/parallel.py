"""Run the DVC pipeline's stages as Ray tasks and record each in dvc.lock as it finishes.

`dvc repro` runs one stage at a time (DVC has no parallel repro); a paper-scale method x sparsity x
seed matrix takes hours that way. This driver starts every stage whose upstream stages are done as a
Ray task: a process running the stage's own `cmd`, with the CPUs and GPUs of `run.cpus_per_stage` /
`run.gpus_per_stage` (a fraction packs several small stages on one GPU; Ray sets CUDA_VISIBLE_DEVICES).
Without a cluster address (`run.address`, or RAY_ADDRESS) it starts a local Ray instance; with one it
joins that cluster, and the stages land on any of its nodes. The driver commits each finished stage
at once (`dvc commit`), so `dvc status` and a later `dvc repro` treat it as if `dvc repro` had run it,
and an interrupted run keeps what finished. Stages that are up to date are skipped.

A stage whose worker or node dies is re-run by Ray (`run.max_retries`; the stage resumes from its
checkpoint, and its orphaned MLflow run is ended by the next stage); a stage that fails (non-zero exit:
bad params, NaN) fails once, with its log's tail, and blocks only its downstream stages.

Storage: every node sees the workspace (and DVC's cache) at the same path (a shared filesystem: NFS, a
cluster's shared disk, one machine). Stage logs go to `.dvc/tmp/parallel/`.

    python -m fairprune.parallel [--jobs N] [STAGE ...]        (make run-parallel JOBS=N)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

LOG_DIR = Path(".dvc") / "tmp" / "parallel"
# what a stage process takes from the driver: the rest (CUDA_VISIBLE_DEVICES above all) is the worker's
DRIVER_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "HOME", "MLFLOW_TRACKING_URI", "FAIRPRUNE_TUNE_STORAGE",
              "FAIRPRUNE_TUNE_WORKERS", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "DVC_NO_ANALYTICS")


SHELL_SYNTAX = set(";&|<>()$`\\\n*?")


def argv_of(cmd: str) -> list[str] | None:
    """A stage command as an argument list when it is a simple command (every command of this project's
    dvc.yaml is), else None (it needs a shell). Run directly, the stage process is the one that dies with
    its Ray worker: a shell would fork it, and a forked child does not inherit PR_SET_PDEATHSIG."""
    import shlex

    return None if SHELL_SYNTAX & set(cmd) else shlex.split(cmd)


def _die_with_parent() -> None:
    """In the stage process (Linux): SIGKILL it when the Ray worker that started it dies, so that a
    stage of a lost worker never runs on beside its retry."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class StageKilled(RuntimeError):
    """The stage process was killed (SIGKILL: its node going away, the kernel's OOM killer): Ray re-runs it."""


def run_stage(cmd: str, wdir: str, env: dict[str, str], stage: str, log: str) -> tuple[int, float, str]:
    """The body of a Ray task: run one stage's command in `wdir` (the shared workspace); (exit code,
    seconds, node id)."""
    import signal
    import subprocess

    import ray

    began, node = time.perf_counter(), ray.get_runtime_context().get_node_id()
    # a retry appends: the log shows every attempt, each header on a line of its own (a killed attempt may
    # have left a progress bar's line unterminated)
    fresh_line = "\n" if os.path.exists(log) and os.path.getsize(log) else ""
    with open(log, "a") as out:
        out.write(f"{fresh_line}--- attempt on node {node} at {time.strftime('%H:%M:%S')}\n")
        out.flush()
        # as dvc repro does: matrix stages read their item from DVC_STAGE (fairprune.stage)
        argv = argv_of(cmd)
        code = subprocess.call(argv or cmd, shell=argv is None, cwd=wdir, env={**os.environ, **env, "DVC_STAGE": stage},
                               stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    if code in (-signal.SIGKILL, 128 + signal.SIGKILL):  # the shell reports its child's SIGKILL as 137
        raise StageKilled(f"{stage} was killed (SIGKILL)")
    return code, time.perf_counter() - began, node


def stage_task(ray, run):
    """`run_stage` as a Ray task with the resources and retries of params' `run` section."""
    return ray.remote(run_stage).options(num_cpus=run.cpus_per_stage, num_gpus=run.gpus_per_stage,
                                         max_retries=run.max_retries, retry_exceptions=[StageKilled])


def submit(task, cmd: str, wdir: str | Path, env: dict[str, str], name: str):
    """Start `cmd` as `task` under the name DVC_STAGE carries; (its ObjectRef, its log, emptied first)."""
    log = (LOG_DIR / (name.replace("/", "_").replace("@", "-") + ".log")).resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    return task.remote(cmd, str(Path(wdir).resolve()), env, name, str(log)), log


def driver_env() -> dict[str, str]:
    return {k: os.environ[k] for k in DRIVER_ENV if k in os.environ}


def tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def start_ray(address: str | None, cpus: int | None):
    import logging

    import ray

    address = os.environ.get("RAY_ADDRESS") or address
    # Ray runs its workers at niceness 15, and the stage processes inherit it: on a machine with any other
    # load they starve. A local instance runs them at normal priority; a cluster should be started with
    # the same variable (docs/scale-out.md).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(f"parallel: {where}, {len(nodes)} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs, "
          f"{ray.cluster_resources().get('GPU', 0):g} GPUs", flush=True)
    return ray


def too_small(ray, run) -> str | None:
    """Why no node of the cluster can ever run a stage (a task asking for more would wait forever), or None."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for key, asked, field in (("CPU", run.cpus_per_stage, "cpus_per_stage"), ("GPU", run.gpus_per_stage, "gpus_per_stage")):
        largest = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if asked > largest:
            fix = "0 on a machine without one" if key == "GPU" else f"at most {largest:g}"
            return (f"run.{field} = {asked:g} but the largest node has {largest:g} {key}(s), so no stage could "
                    f"ever start; set run.{field} to {fix}, or start the nodes with more (`ray start --num-{key.lower()}s`)")
    return None


def main(argv: list[str] | None = None) -> int:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from fairprune import config
    from fairprune.errors import ParamsError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="stages (or matrix groups such as `prune`) with their upstream; "
                                                   "default: the whole pipeline")
    parser.add_argument("--jobs", type=int, default=None,
                        help="stages running at once at most (default: as many as the cluster's resources allow); "
                             "a local Ray instance gets jobs x run.cpus_per_stage CPUs")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs {args.jobs} is invalid; give at least 1 (stages running at once)", file=sys.stderr)
        return 2
    try:  # only the `run` section: the rest of the file is the validate stage's to judge, as under dvc repro
        run = config.run_section("params.yaml")
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = str(max(1, math.ceil(run.cpus_per_stage)))
    env = {**driver_env(), "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}

    repo = Repo()
    graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
    try:
        chosen = {s for t in (args.targets or [None]) for s in repo.stage.collect(t, with_deps=True)}
    except DvcException as exc:  # it names the unknown stage
        print(f"error: {exc}; list the stages with `dvc stage list`", file=sys.stderr)
        return 2
    local_cpus = math.ceil((args.jobs or os.cpu_count() or 1) * run.cpus_per_stage)
    ray = start_ray(run.address, local_cpus)
    short = too_small(ray, run)
    if short:
        print(f"error: {short}", file=sys.stderr)
        return 2
    task = stage_task(ray, run)

    waiting, done, failed, ran, nodes = set(chosen), set(), [], 0, set()
    running: dict = {}  # ObjectRef -> (stage, log)
    total, began = len(chosen), time.perf_counter()

    def report(stage, what: str) -> None:
        finished = len(done) + len(failed)
        print(f"[{finished}/{total} {time.perf_counter() - began:7.1f}s] {stage.addressing}: {what}", flush=True)

    while waiting or running:
        skipped = True
        while skipped:  # an up-to-date stage can make its downstream ready at once
            skipped = False
            ready = [s for s in waiting if all(d in done or d not in chosen for d in graph.successors(s))]
            for stage in sorted(ready, key=lambda s: s.addressing):
                if args.jobs is not None and len(running) >= args.jobs:
                    break
                waiting.discard(stage)
                with repo.lock:
                    changed = stage.changed()
                if changed:
                    ref, log = submit(task, stage.cmd, stage.wdir, env, stage.addressing)
                    running[ref] = (stage, log)
                else:
                    done.add(stage)
                    skipped = True
                    report(stage, "up to date")
        if not running:
            break  # what is left waits on a failed stage
        finished, _ = ray.wait(list(running), num_returns=1)
        for ref in finished:
            stage, log = running.pop(ref)
            try:
                code, seconds, node = ray.get(ref)
            except ray.exceptions.RayError as exc:  # its worker or node died more often than run.max_retries
                failed.append(stage)
                report(stage, f"FAILED: {type(exc).__name__} after {run.max_retries} retries ({exc}); log {log}")
                continue
            nodes.add(node)
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
            report(stage, f"ran in {seconds:.1f}s on node {node[:8]}, committed")
    blocked = sorted(s.addressing for s in waiting)
    print(f"parallel: {ran} ran, {len(done) - ran} up to date, {len(failed)} failed"
          + (f" ({', '.join(s.addressing for s in failed)})" if failed else "")
          + (f", {len(blocked)} not run because an upstream stage failed" if blocked else "")
          + f", in {time.perf_counter() - began:.1f}s on {len(nodes)} node(s), {run.cpus_per_stage:g} CPU(s)"
          + (f" and {run.gpus_per_stage:g} GPU(s)" if run.gpus_per_stage else "") + " per stage")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the running stages got the same signal and stop at their checkpoints
        print("interrupted: the finished stages are committed; rerun to go on", file=sys.stderr)
        sys.exit(130)

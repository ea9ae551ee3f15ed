"""Stage `tune` (`make tune`): an Optuna study over a fair method's fairness-related parameters,
two objectives on the validation split (accuracy up, tune.gap down), then the Pareto front, one
chosen trial, its params override and a single test evaluation, in reports/tune/.

  python pipeline/tune.py               start tune.workers workers (FAIRPRUNE_TUNE_WORKERS wins), summarise
  python pipeline/tune.py --worker K    one more worker on the same storage (another terminal or machine)
"""
import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from fairprune import artifacts, tracking
from fairprune.device import resolve
from fairprune.errors import DataError, FairpruneError
from fairprune.stage import run
from fairprune.tuning import summary
from fairprune.tuning.objective import TrialRunner, overrides_of, with_overrides
from fairprune.tuning.study import (
    ENV_WORKERS,
    FAIL_REASON,
    RETRY_OF,
    SURPLUS,
    finished,
    open_study,
    redacted,
    shown_storage,
    requeue_interrupted,
    storage_url,
    work,
)

OUT = artifacts.TUNE_DIR
PARENT_RUN, TEST_RESULT = "mlflow_parent_run_id", "chosen_test"


def progress(budget):
    def report(study, trial):
        done = sum(finished(t) for t in study.get_trials(deepcopy=False))
        if trial.values:
            what = f"val accuracy {trial.values[0]:.4f}, {study.user_attrs.get('gap', 'gap')} {trial.values[1]:.4f}"
        else:
            what = trial.user_attrs.get(FAIL_REASON) or ("surplus" if trial.user_attrs.get(SURPLUS) else trial.state.name)
        print(f"trial {trial.number} {trial.state.name.lower()}: {what} ({done}/{budget} finished)", flush=True)
    return report


def run_worker(params, study, worker: int, workers: int, device, runner=None) -> TrialRunner:
    if params.base.threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    experiment_id = tracking.ensure_store(params.base)
    runner = runner or TrialRunner(params, device, study.user_attrs.get(PARENT_RUN), experiment_id)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends the trial like Ctrl-C
    ran = work(study, runner, params.tune.trials, catch=(FairpruneError,), poll_s=params.tune.heartbeat_s,
               callbacks=[progress(params.tune.trials)])
    print(f"worker {worker}: ran {ran} trial(s)", flush=True)
    return runner


def spawn_workers(args, workers: int) -> list[subprocess.Popen]:
    """Workers 1..W-1 as child processes; this process is worker 0."""
    return [subprocess.Popen([sys.executable, __file__, "--worker", str(k), "--of", str(workers),
                              "--params", args.params]) for k in range(1, workers)]


class RayWorkers:
    """Workers 1..W-1 as Ray tasks on a cluster (RAY_ADDRESS or run.address), so that they spread over its
    nodes; each runs `pipeline/tune.py --worker K` against the shared storage. A task whose node dies is
    re-run (run.max_retries); the study's heartbeat re-enqueues the trial it held, so the budget stays exact."""

    def __init__(self, args, workers: int, run_params, address: str):
        from fairprune.parallel import driver_env, stage_task, start_ray, submit

        self.ray = start_ray(address, None)
        task = stage_task(self.ray, run_params)
        script = Path(__file__).resolve()
        self.refs = [submit(task, f"{sys.executable} {script} --worker {k} --of {workers} --params {args.params}",
                            Path.cwd(), driver_env(), f"tune-worker-{k}")[0] for k in range(1, workers)]

    def terminate(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)  # the worker's process dies with it; its trial is retried later

    def wait(self) -> list[int]:
        results = self.ray.get(self.refs)
        for k, (_, seconds, node) in enumerate(results, start=1):
            print(f"tuning worker {k}: {seconds:.0f}s on Ray node {node[:8]}", flush=True)
        return [code for code, _, _ in results]


def spawn(args, workers: int, params):
    """The extra workers: Ray tasks on a cluster, child processes on this machine otherwise."""
    address = os.environ.get("RAY_ADDRESS") or params.run.address
    if address and workers > 1:
        return RayWorkers(args, workers, params.run, address)
    return spawn_workers(args, workers)


def wait_for(procs) -> None:
    codes = procs.wait() if isinstance(procs, RayWorkers) else [p.wait() for p in procs]
    failed = [k + 1 for k, code in enumerate(codes) if code != 0]
    if failed:
        raise FairpruneError(f"tuning worker(s) {failed} exited with codes {[codes[k - 1] for k in failed]}; rerun "
                             f"`python pipeline/tune.py` to resume the study where it stopped")


def main(params, args, timer):
    tune = params.tune
    if not artifacts.dense_model(tune.seed).exists() or not artifacts.PREPARED.exists():
        raise DataError(f"{artifacts.dense_model(tune.seed)} or {artifacts.PREPARED} is missing; run "
                        f"`dvc repro train` first (tune.seed must be one of base.seeds)")
    url = storage_url(params, tracking.project_root())
    device = resolve(params.base.device)
    if args.worker is not None:
        run_worker(params, open_study(params, url, args.worker), args.worker, args.of, device)
        return
    workers = int(os.environ.get(ENV_WORKERS) or tune.workers)
    study = open_study(params, url)
    study.set_user_attr("gap", tune.gap)
    requeued = requeue_interrupted(study)
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    print(f"study {study.study_name} in {redacted(url)}: {done}/{tune.trials} trials finished"
          + (f", re-enqueued interrupted trial(s) {requeued}" if requeued else "") + f"; {workers} worker(s)")
    with tracking.stage_run(params.base, "tune", "tune",
                            {"tune": tune.model_dump(), "finetune": params.finetune.model_dump(),
                             "mitigation": params.mitigation.model_dump()},
                            run_id=study.user_attrs.get(PARENT_RUN), study=study.study_name, method=tune.method,
                            sparsity=tune.sparsity, seed=tune.seed) as parent:
        study.set_user_attr(PARENT_RUN, parent.info.run_id)
        others = spawn(args, workers, params)
        try:
            runner = run_worker(params, study, 0, workers, device)
        except BaseException:
            # their running trials are marked interrupted (or found stale) and re-enqueued next time
            for proc in ([others] if isinstance(others, RayWorkers) else others):
                proc.terminate()
            raise
        wait_for(others)
        summarise(params, study, url, runner)
    print(f"tuning done in {timer.seconds:.1f}s: {OUT}/README.md")


def scored_once(study, key: str, runner: TrialRunner, params, what: str) -> dict:
    """Validation and test scores of one configuration, computed once per study (kept in the study),
    so the test split is never looked at again for the same choice."""
    if key not in study.user_attrs:
        print(f"evaluating {what} on validation and test (once)", flush=True)
        scores = runner.score(params, ("val", "test"))
        study.set_user_attr(key, {**scores["val"].record, **scores["test"].record})
    return study.user_attrs[key]


def summarise(params, study, url, runner: TrialRunner) -> None:
    import mlflow

    tune = params.tune
    trials = study.get_trials(deepcopy=False)
    front, chosen = study.best_trials, summary.choose(study, params)
    record = {
        "study": study.study_name, "storage": shown_storage(url, tracking.project_root()), "method": tune.method, "sparsity": tune.sparsity,
        "seed": tune.seed, "gap": tune.gap, "gap_budget": tune.gap_budget, "rule": summary.choice_rule(params),
        "complete": sum(t.state.name == "COMPLETE" for t in trials),
        "failed": sum(FAIL_REASON in t.user_attrs for t in trials),
        "surplus": sum(bool(t.user_attrs.get(SURPLUS)) for t in trials),
        "retried": sum(t.state.name == "FAIL" and FAIL_REASON not in t.user_attrs for t in trials),
        "requeued_from": {t.number: t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs},
        "pareto": [summary.trial_row(t) for t in sorted(front, key=lambda t: t.values[1])],
        "trials": [summary.trial_row(t) for t in trials],
        "chosen": summary.trial_row(chosen) if chosen else None,
        "inputs_digest": artifacts.tune_inputs_digest(params),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    files = [summary.pareto_figure(study, front, chosen, params, OUT / "pareto.png")]
    if chosen is not None:
        nested = overrides_of(params, chosen.params)
        record["dvc_exp_run"] = summary.exp_run_command(nested)
        summary.write_override(OUT / "chosen.yaml", nested,
                               f"Chosen by `tune` from study {study.study_name}, trial {chosen.number}:\n"
                               f"{record['rule']}.\nApply: .venv/bin/fairprune-params apply reports/tune/chosen.yaml")
        files.append(OUT / "chosen.yaml")
        record["chosen_test"] = scored_once(study, f"{TEST_RESULT}:{chosen.number}", runner,
                                            with_overrides(params, nested), f"the chosen trial {chosen.number}")
        tracking.log_metrics({f"chosen/{k}": v for k, v in record["chosen_test"].items()})
        # Same fine-tuning budget as the trials (tune.epochs), only the searched values untouched.
        record["default_test"] = scored_once(study, f"{TEST_RESULT}:default", runner,
                                             with_overrides(params, overrides_of(params, {})),
                                             "the untuned params.yaml values")
        tracking.log_metrics({f"default/{k}": v for k, v in record["default_test"].items()})
    else:
        summary.write_override(OUT / "chosen.yaml", {}, f"No trial of study {study.study_name} meets the rule:\n"
                               f"{record['rule']}.\nRaise tune.gap_budget or tune.trials.")
    artifacts.write_json(OUT / "pareto.json", record)
    (OUT / "README.md").write_text(summary.markdown_page(record))
    for path in (*files, OUT / "pareto.json", OUT / "README.md"):
        mlflow.log_artifact(str(path), artifact_path="tune")
    print(f"Pareto front: {len(front)} of {record['complete']} complete trials; chosen: "
          f"{chosen.number if chosen else 'none (no trial meets tune.gap_budget)'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=int, help="run as worker K only (no summary)")
    parser.add_argument("--of", type=int, default=1, help="workers on this machine (sets torch threads)")
    run(main, parser)

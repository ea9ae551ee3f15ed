"""Cost of tuning on the embedded default: overhead per trial, and what a second worker buys.

Targets: trial overhead outside training (study bookkeeping, MLflow logging, scoring, data
loading) at most 10 % of a trial's wall time; with 2 workers on 2 cores, study throughput (trials
per minute) at least 1.6x that of 1 worker.

A temporary project gets the prepared data and a dense model, then `pipeline/tune.py` runs the
same study (fresh storage each time) with 1 and then 2 workers. Throughput is measured over the
study itself (first trial start to last trial end, from the storage) and end to end (the command,
interpreter start-up and summary included).

    python benchmarks/bench_tune.py [--trials 12] [--epochs 10]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]


def stage(script: str, cwd: Path, *args: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "pipeline" / script), *args], cwd=cwd, check=True,
                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def study_numbers(url: str) -> dict:
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    train = [t.user_attrs["train_s"] for t in trials]
    return {"trials": len(trials), "span_s": span, "trial_wall_s": sum(walls), "train_s": sum(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["base"]["seeds"] = [0]
        params["tune"].update(trials=args.trials, epochs=args.epochs, sampler="random")
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage("prepare.py", work)
        stage("train.py", work, "--seed", "0", "--variant", "plain")
        results = {}
        for workers in (1, 2):
            url = f"sqlite:///{work / f'study-{workers}.db'}"
            wall = stage("tune.py", work, env={"FAIRPRUNE_TUNE_WORKERS": str(workers), "FAIRPRUNE_TUNE_STORAGE": url})
            results[workers] = {**study_numbers(url), "command_s": wall}
    one, two = results[1], results[2]
    overhead = 1 - one["train_s"] / one["span_s"]
    print(f"{args.trials} trials of {args.epochs} fine-tuning epochs, {os.cpu_count()} cores")
    for workers, r in results.items():
        print(f"  {workers} worker(s): study span {r['span_s']:.1f}s ({60 * r['trials'] / r['span_s']:.1f} trials/min), "
              f"command {r['command_s']:.1f}s, training {r['train_s']:.1f}s of {r['trial_wall_s']:.1f}s trial wall")
    print(f"overhead outside training (1 worker, share of the study span): {overhead:.1%} (target <= 10%)")
    print(f"throughput 2 workers / 1 worker: study span {one['span_s'] / two['span_s']:.2f}x, "
          f"end to end {one['command_s'] / two['command_s']:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()

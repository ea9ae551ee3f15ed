"""What every pipeline stage shares: params loading, logging, timing and error handling.

A stage script is `run(main)` where `main(params, args) -> None`. A FairpruneError (bad
params, bad data, divergence) prints one line naming the problem and the fix and exits 2.

Matrix stages take their item (method, sparsity, seed...) from the stage name DVC exports as
DVC_STAGE, never from the command line DVC builds: DVC pastes matrix values into a shell
command unquoted, so a params value such as `magnitude$(touch X)` would run before any check.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import sys
import time
from typing import Callable

import torch

from fairprune import config
from fairprune.config import Params
from fairprune.errors import FairpruneError


def dvc_label(value) -> str:
    """How DVC renders a matrix value in a stage name (0.5 -> '0.5', 3 -> '3')."""
    return str(float(value)) if isinstance(value, float) else str(value)


def matrix_item(family: str, axes: dict[str, list]) -> dict:
    """The matrix item of the running DVC stage `<family>@<v1>-<v2>...`: each axis's value, found by
    matching DVC_STAGE against every combination of the (validated) params values."""
    name = os.environ.get("DVC_STAGE", "")
    for combo in itertools.product(*axes.values()):
        if name == f"{family}@" + "-".join(dvc_label(v) for v in combo):
            return dict(zip(axes, combo))
    if not name:
        raise FairpruneError(f"no stage given: run this stage through `dvc repro {family}` or pass "
                             f"{' '.join('--' + a + ' VALUE' for a in axes)}")
    raise FairpruneError(f"the DVC stage '{name}' matches no combination of {', '.join(axes)} in params.yaml; "
                         f"params.yaml changed while DVC ran: rerun `dvc repro`")


def fill_matrix_args(args: argparse.Namespace, family: str, axes: dict[str, list]) -> None:
    """Fill the matrix arguments the command line left out (always, under DVC) from DVC_STAGE."""
    if all(getattr(args, a) is None for a in axes):
        for key, value in matrix_item(family, axes).items():
            setattr(args, key, value)
    elif any(getattr(args, a) is None for a in axes):
        raise FairpruneError(f"give all of {', '.join('--' + a for a in axes)} or none (under `dvc repro`)")


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def run(main: Callable[[Params, argparse.Namespace, Timer], None],
        parser: argparse.ArgumentParser | None = None) -> None:
    timer = Timer()
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml", help="the params file to read")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (a timeout, `kill`, a scheduler) interrupts like Ctrl-C: checkpoints stay, and the MLflow
    # runs end KILLED instead of staying RUNNING forever
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        params = config.load(args.params)
        if params.base.threads:
            torch.set_num_threads(params.base.threads)
        main(params, args, timer)
    except FairpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _end_runs("FAILED")
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the stage to resume from its last checkpoint", file=sys.stderr)
        _end_runs("KILLED")
        sys.exit(130)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _end_runs(status: str) -> None:
    """End every MLflow run this process left active (nested ones first) with `status`."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status)

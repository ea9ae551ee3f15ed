"""What every pipeline stage shares: params loading, logging, timing and error handling.

A stage script is `run(main)` where `main(params, args) -> None`. A FairpruneError (bad
params, bad data, divergence) prints one line naming the problem and the fix and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable

import torch

from fairprune import config
from fairprune.config import Params
from fairprune.errors import FairpruneError


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
    try:
        params = config.load(args.params)
        if params.base.threads:
            torch.set_num_threads(params.base.threads)
        main(params, args, timer)
    except FairpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the stage to resume from its last checkpoint", file=sys.stderr)
        sys.exit(130)

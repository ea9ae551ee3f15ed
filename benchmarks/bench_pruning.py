"""Pruning cost and benefit, measured in one process:

1. structured speed-up: ResNet-18 (32x32 input, batch 64) with 50 % and 75 % of its channels
   removed by l1_filter through Torch-Pruning; measured CPU speed-up versus the MAC reduction
   (target: speed-up >= 0.7 x MAC reduction);
2. scoring time of SNIP, GraSP and SynFlow versus one training epoch of the same model on the same
   data (target: each < 1 epoch).

    python benchmarks/bench_pruning.py [--arch small_cnn] [--utkface ../shared/data/utkface/UTKFace.tar.gz]

--utkface times the epoch and the scoring on UTKFace (configs/utkface_race.yaml's data) instead of
the digits, whose 1,000-image epoch is shorter than SynFlow's fixed, data-independent 100 rounds.
"""
import argparse
import copy
import time
from pathlib import Path

import torch
import torch_pruning as tp
import yaml
from torch import nn

from fairprune import models
from fairprune.config import DataParams, PruneParams, TrainParams
from fairprune.data import prepare
from fairprune.pruning import PruneContext, get_method, prunable_weights
from fairprune.pruning.cost import macs_per_image, paired_latency_ms
from fairprune.pruning.structured import FilterImportance, l1_norm
from fairprune.training import fit

CPU = torch.device("cpu")
UTKFACE_RACE = Path(__file__).resolve().parents[1] / "configs" / "utkface_race.yaml"  # its data section


def structured_speedups() -> None:
    shape = (3, 32, 32)
    torch.manual_seed(0)
    dense = models.Classifier("resnet18", shape, 10, [0.5] * 3, [0.25] * 3).eval()
    dense_macs = macs_per_image(dense, shape)
    print("structured pruning, ResNet-18 32x32, batch 64, CPU median of 20 rounds, dense and pruned alternated")
    print(f"  {'channels removed':>16} {'MAC reduction':>14} {'speed-up':>9} {'speed-up / MAC red.':>20}")
    for ratio in (0.5, 0.75):
        model = copy.deepcopy(dense)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        tp.pruner.BasePruner(model, torch.rand(1, *shape), importance=FilterImportance(l1_norm),
                             pruning_ratio=ratio, ignored_layers=[head]).step()
        reduction = dense_macs / macs_per_image(model, shape)
        speedup = 1 / paired_latency_ms([dense, model], shape)[1][1]
        print(f"  {ratio:>16.0%} {reduction:>13.2f}x {speedup:>8.2f}x {speedup / reduction:>19.2f}   (target >= 0.70)")


def scoring_times(arch: str, utkface: str | None) -> None:
    source = DataParams(**{**yaml.safe_load(UTKFACE_RACE.read_text())["data"], "root": utkface}) \
        if utkface else DataParams()
    data = prepare(source)
    torch.manual_seed(0)
    model = models.build(arch, data)
    start = time.perf_counter()
    fit(copy.deepcopy(model), data, TrainParams(epochs=1), CPU, seed=0, desc="one epoch")
    epoch = time.perf_counter() - start
    options = PruneParams().model_dump(exclude={"methods", "sparsities"})
    print(f"scoring time vs one training epoch ({arch}, {source.dataset}, {len(data.indices('train'))} training "
          f"images, {epoch:.2f} s per epoch incl. validation)")
    for name in ("snip", "grasp", "synflow"):
        twin = copy.deepcopy(model)
        ctx = PruneContext(data, CPU, seed=0, options=options)
        start = time.perf_counter()
        get_method(name).scores(twin, prunable_weights(twin), ctx, 0.9)
        took = time.perf_counter() - start
        print(f"  {name:>8}: {took:6.2f} s = {took / epoch:5.2f} epochs   (target < 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--utkface", metavar="PATH", help="UTKFace.tar.gz (or its extracted folder) to time on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the latency part (1: on a shared machine a 2 ms forward on 2 threads "
                             "waits for a descheduled thread, which read 1.5x instead of 10.5x at 75 %% with another "
                             "pipeline running)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    structured_speedups()
    torch.set_num_threads(threads)
    scoring_times(args.arch, args.utkface)


if __name__ == "__main__":
    main()

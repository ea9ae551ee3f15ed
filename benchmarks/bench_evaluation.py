"""Cost of the evaluation pass with every per-group metric versus a plain accuracy pass.

Target: at most 1.05x. Both passes run in this process on the same data and model, alternated,
and the median of repeated timings is compared.

    python benchmarks/bench_evaluation.py [--arch small_cnn] [--repeats 15]
"""
import argparse
import statistics
import time

import torch

from fairprune import models
from fairprune.config import DataParams
from fairprune.data import prepare
from fairprune.evaluation import plain_accuracy, predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--copies", type=int, default=8, help="tile the digits set to get a longer pass")
    args = parser.parse_args()
    data = prepare(DataParams())
    images, targets, groups = (t.repeat(args.copies, *[1] * (t.dim() - 1)) for t in
                               (data.images, data.targets, data.groups))
    torch.manual_seed(0)
    model = models.build(args.arch, data).eval()
    device = torch.device("cpu")
    timings = {"plain accuracy": [], "per-group metrics": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain_accuracy(model, images, targets, 512, device)
        timings["plain accuracy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        predict(model, images, targets, groups, data.group_names, data.num_classes, 512, device).stats()
        timings["per-group metrics"].append(time.perf_counter() - start)
    plain = statistics.median(timings["plain accuracy"])
    full = statistics.median(timings["per-group metrics"])
    print(f"{len(targets)} images, {args.arch}, median of {args.repeats}")
    print(f"plain accuracy pass      {plain * 1000:8.1f} ms")
    print(f"per-group metrics pass   {full * 1000:8.1f} ms")
    print(f"ratio                    {full / plain:8.3f}x   (target <= 1.05x)")


if __name__ == "__main__":
    main()

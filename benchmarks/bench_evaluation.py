"""Cost of the evaluation pass with every per-group metric versus a plain accuracy pass.

Target: at most 1.05x. Both passes run in this process on the same data and model, alternated,
and the median of repeated timings is compared. It also times the per-group metrics alone, by
fairprune's bincount (fairprune.fairness.metrics) and by fairlearn's MetricFrame on the same
predictions (tests/test_metrics.py checks that the two agree): the overhead that decides which
one the evaluation uses.

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
from fairprune.fairness import group_stats


def metricframe(p):
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    return MetricFrame(metrics={"accuracy": accuracy_score, "loss": lambda t, y, sample_loss: sample_loss.mean()},
                       y_true=p.y_true, y_pred=p.y_pred, sensitive_features=p.group,
                       sample_params={"loss": {"sample_loss": p.loss}}).by_group


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
    timings = {"plain accuracy": [], "per-group metrics": [], "bincount": [], "MetricFrame": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain_accuracy(model, images, targets, 512, device)
        timings["plain accuracy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        predictions = predict(model, images, targets, groups, data.group_names, data.num_classes, 512, device)
        predictions.stats()
        timings["per-group metrics"].append(time.perf_counter() - start)
        start = time.perf_counter()
        group_stats(predictions.y_true, predictions.y_pred, predictions.loss, predictions.group,
                    len(predictions.group_names))
        timings["bincount"].append(time.perf_counter() - start)
        start = time.perf_counter()
        metricframe(predictions)
        timings["MetricFrame"].append(time.perf_counter() - start)
    plain = statistics.median(timings["plain accuracy"])
    full = statistics.median(timings["per-group metrics"])
    print(f"{len(targets)} images, {args.arch}, median of {args.repeats}")
    print(f"plain accuracy pass      {plain * 1000:8.1f} ms")
    print(f"per-group metrics pass   {full * 1000:8.1f} ms")
    print(f"ratio                    {full / plain:8.3f}x   (target <= 1.05x)")
    bincount, frame = (statistics.median(timings[k]) for k in ("bincount", "MetricFrame"))
    print(f"per-group accuracy+loss: bincount {bincount * 1000:.2f} ms, fairlearn MetricFrame {frame * 1000:.2f} ms "
          f"({frame / bincount:.0f}x; {frame / plain:.2f}x the whole plain pass)")


if __name__ == "__main__":
    main()

"""Size and speed of a model: parameters, MACs per image and measured CPU latency."""
from __future__ import annotations

import statistics
import time

import torch
import torch_pruning as tp
from torch import nn


def macs_per_image(model: nn.Module, input_shape) -> int:
    example = torch.rand(1, *input_shape, device=next(model.parameters()).device)
    macs, _ = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs)


def paired_latency_ms(models: list[nn.Module], input_shape, batch_size: int = 64, repeats: int = 20,
                      warmup: int = 3) -> tuple[list[float], list[float]]:
    """Median forward time of each model (ms), timed in alternation so that load on a shared machine
    shifts every model alike, and the median over rounds of each model's time / the first model's
    (a speed-up is its inverse)."""
    models = [m.eval().cpu() for m in models]
    x = torch.rand(batch_size, *input_shape)
    with torch.no_grad():
        for _ in range(warmup):
            for model in models:
                model(x)
        rounds = []
        for _ in range(repeats):
            times = []
            for model in models:
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
            rounds.append(times)
    medians = [1000 * statistics.median(r[i] for r in rounds) for i in range(len(models))]
    ratios = [statistics.median(r[i] / r[0] for r in rounds) for i in range(len(models))]
    return medians, ratios

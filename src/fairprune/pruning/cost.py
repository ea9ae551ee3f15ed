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


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape, batch_size: int = 64, repeats: int = 20, warmup: int = 3) -> float:
    """Median CPU wall time of one forward pass over a batch, in milliseconds."""
    model = model.eval().cpu()
    x = torch.rand(batch_size, *input_shape)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

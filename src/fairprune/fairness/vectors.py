"""Parameter-shaped vectors (lists of tensors, one per parameter) and power iteration on them,
shared by the diagnostics and the full mitigation."""
from __future__ import annotations

from typing import Callable

import torch

Vector = list[torch.Tensor]


def norm(v: Vector) -> float:
    return float(torch.sqrt(sum((t.detach().double() ** 2).sum() for t in v)))


def dot(a: Vector, b: Vector) -> float:
    return float(sum((x.detach().double() * y.detach().double()).sum() for x, y in zip(a, b)))


def combine(vectors: list[Vector], weights: list[float]) -> Vector:
    """sum_i weights[i] * vectors[i]."""
    return [sum(w * v[i] for w, v in zip(weights, vectors)) for i in range(len(vectors[0]))]


def power_iteration(hvp: Callable[[Vector], Vector], v: Vector, iterations: int) -> tuple[float, Vector]:
    """The eigenvalue of largest magnitude of `hvp` (Rayleigh quotient) and its unit vector,
    starting from the unit vector `v` (random, or the last call's result to warm-start)."""
    eigenvalue = 0.0
    for _ in range(iterations):
        hv = hvp(v)
        eigenvalue = dot(v, hv)
        length = norm(hv)
        if length == 0.0:
            break
        v = [t / length for t in hv]
    return eigenvalue, v

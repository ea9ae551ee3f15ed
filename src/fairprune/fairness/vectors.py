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


def power_iteration(hvp: Callable[[Vector], Vector], v: Vector, iterations: int,
                    tolerance: float = 0.0) -> tuple[float, Vector]:
    """The eigenvalue of largest MAGNITUDE of `hvp` (Rayleigh quotient) and its unit vector,
    starting from the unit vector `v` (random, or the last call's result to warm-start). At most
    `iterations` steps; fewer when two successive estimates differ by at most `tolerance` x |estimate|."""
    eigenvalue = 0.0
    for step in range(iterations):
        hv = hvp(v)
        previous, eigenvalue = eigenvalue, dot(v, hv)
        length = norm(hv)
        if length == 0.0:
            break
        v = [t / length for t in hv]
        if tolerance and step and abs(eigenvalue - previous) <= tolerance * abs(eigenvalue):
            break
    return eigenvalue, v


def top_eigenpair(hvp: Callable[[Vector], Vector], v: Vector, iterations: int,
                  tolerance: float = 0.0) -> tuple[float, Vector]:
    """The largest ALGEBRAIC eigenvalue (Tran et al.'s lambda_max in Eq. 4 and 7) and its unit vector.

    Plain power iteration finds the eigenvalue mu of largest magnitude, which is the largest
    algebraic one unless it is negative (a Hessian away from a minimum often has such directions).
    Then every eigenvalue of H - mu I is >= 0 and its largest is lambda_max - mu: a second power
    iteration on the shifted operator, from the same start `v` (so a warm start still helps)."""
    mu, vector = power_iteration(hvp, v, iterations, tolerance)
    if mu >= 0:
        return mu, vector

    def shifted(u: Vector) -> Vector:
        return combine([hvp(u), u], [1.0, -mu])

    _, vector = power_iteration(shifted, v, iterations, tolerance)
    return dot(vector, hvp(vector)), vector

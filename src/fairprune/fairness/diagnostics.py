"""Tran et al.'s diagnostics (docs/methods.md, first section): why a pruned model is unfair to a group.

Per group `a`, on a seeded sample of its training data: size, accuracy, loss, the gradient norm
||grad J(theta; D_a)||, the Hessian's top eigenvalue by power iteration on Hessian-vector
products, the mean closeness to the decision boundary, and Theorem 1's bound
||g_a|| ||theta_bar - theta*|| + 1/2 lambda_a ||theta_bar - theta*||^2 (gradient and eigenvalue
of the dense model) next to the measured excessive loss R(a).

Choices the paper leaves open, made here:
- BatchNorm runs in eval mode (the statistics the deployed model uses).
- Weights that are exactly zero in a prunable layer are removed parameters: gradients and
  Hessian-vector products live in the subspace of the surviving weights.
- The population quantities weight each group by its true training size, so the population
  gradient is exactly sum_a (N_a / N) g_a even though each group is sampled separately.
- The top eigenvalue is the largest algebraic one (Rayleigh quotient; a shifted second power
  iteration when the eigenvalue of largest magnitude is negative), as Tran et al.'s lambda_max.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairprune.fairness.vectors import combine, norm, top_eigenpair
from fairprune.pruning.base import prunable_weights


@dataclass
class GroupSample:
    images: torch.Tensor  # uint8, on the device
    targets: torch.Tensor

    def chunks(self, batch_size: int):
        for start in range(0, len(self.targets), batch_size):
            yield self.images[start:start + batch_size].float().div(255.0), self.targets[start:start + batch_size]


class Subspace:
    """The model's free parameters: every parameter, without the zeroed weights of pruned layers."""

    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        pruned = {id(m.weight) for m, _ in prunable_weights(model, exclude_output_layer=False)}
        self.masks = [(p != 0).to(p.dtype) if id(p) in pruned and bool((p == 0).any()) else None
                      for p in self.params]

    def project(self, tensors):
        return [t if m is None else t * m for t, m in zip(tensors, self.masks)]

    def random_unit(self, generator: torch.Generator) -> list[torch.Tensor]:
        v = self.project([torch.randn(p.shape, generator=generator).to(p.device) for p in self.params])
        return [t / norm(v) for t in v]

    def by_name(self, vector) -> dict[str, torch.Tensor]:
        return {n: t.detach() for n, t in zip(self.names, vector)}

    def start(self, named: dict[str, torch.Tensor] | None, generator: torch.Generator) -> list[torch.Tensor]:
        """`named` (another model's eigenvector, by parameter name) projected on this subspace as the
        unit start of a power iteration; a seeded random one when it does not fit (other shapes)."""
        if named is None or any(n not in named or named[n].shape != p.shape for n, p in zip(self.names, self.params)):
            return self.random_unit(generator)
        v = self.project([named[n].to(p.device) for n, p in zip(self.names, self.params)])
        length = norm(v)
        return [t / length for t in v] if length > 0 else self.random_unit(generator)


def gradient(model: nn.Module, space: Subspace, sample: GroupSample, batch_size: int) -> list[torch.Tensor]:
    """grad of the mean loss over the sample (chunks summed, so any batch size gives the same answer)."""
    total = [torch.zeros_like(p) for p in space.params]
    n = len(sample.targets)
    for x, y in sample.chunks(batch_size):
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        total = combine([total, torch.autograd.grad(loss, space.params)], [1.0, 1.0])
    return space.project(total)


def hessian_vector_product(model: nn.Module, space: Subspace, sample: GroupSample, vector,
                           batch_size: int) -> list[torch.Tensor]:
    """H v of the mean loss over the sample, by double backward."""
    total = [torch.zeros_like(p) for p in space.params]
    n = len(sample.targets)
    for x, y in sample.chunks(batch_size):
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        grads = torch.autograd.grad(loss, space.params, create_graph=True)
        inner = sum((g * v).sum() for g, v in zip(grads, vector))
        total = combine([total, torch.autograd.grad(inner, space.params)], [1.0, 1.0])
    return space.project(total)


def top_eigenvalue(hvp, space: Subspace, iterations: int, seed: int, tolerance: float = 0.0,
                   start: dict | None = None) -> tuple[float, list[torch.Tensor]]:
    """The largest algebraic eigenvalue, by power iteration from `start` (a warm start: another model's
    eigenvector by parameter name) or a seeded random unit vector of the subspace."""
    return top_eigenpair(hvp, space.start(start, torch.Generator().manual_seed(seed)), iterations, tolerance)


@torch.no_grad()
def _outputs(model: nn.Module, sample: GroupSample, batch_size: int) -> dict[str, float]:
    loss = correct = closeness = 0.0
    for x, y in sample.chunks(batch_size):
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        top2 = logits.softmax(1).topk(2, dim=1).values
        closeness += float((1 - (top2[:, 0] - top2[:, 1])).sum())
    n = max(len(sample.targets), 1)
    return {"loss": loss / n, "accuracy": correct / n, "boundary_closeness": closeness / n}


def group_outputs(model: nn.Module, samples: list[GroupSample], batch_size: int = 256) -> dict:
    """Loss, accuracy and boundary closeness per group only (no gradients): {"groups": [...]}."""
    model.eval()
    return {"groups": [_outputs(model, s, batch_size) if len(s.targets) else {} for s in samples]}


def group_samples(data, split: str, per_group: int, seed: int, device: torch.device) -> tuple[list, np.ndarray]:
    """A seeded sample of at most `per_group` examples of each group, and each group's full size."""
    images, targets, groups = data.subset(split)
    generator = torch.Generator().manual_seed(seed)
    samples, sizes = [], np.bincount(groups.numpy(), minlength=data.num_groups)
    for g in range(data.num_groups):
        idx = torch.nonzero(groups == g).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)[:per_group]]
        samples.append(GroupSample(images[idx].to(device), targets[idx].to(device)))
    return samples, sizes


def parameter_distance(model: nn.Module, dense: nn.Module) -> float:
    """||theta_bar - theta*|| over parameters matched by name; NaN when they do not match (structured
    pruning changes shapes). Names, not order: folding a pruning mask re-registers the weight last."""
    a, b = dict(model.named_parameters()), dict(dense.named_parameters())
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("nan")
    return norm([a[k].detach() - b[k].detach() for k in a])


def diagnose(model: nn.Module, samples: list[GroupSample], sizes: np.ndarray, *, iterations: int, seed: int,
             batch_size: int = 256, tolerance: float = 0.0, vectors: dict | None = None) -> dict:
    """Per-group and population diagnostics of one model on pre-drawn group samples.

    The Hessian's top eigenvalues come from at most `iterations` power steps, fewer once the estimate
    moves by at most `tolerance` (relative). `vectors` carries eigenvectors between calls: those it
    holds (another model's, e.g. the dense model of the same seed) are the warm starts, and this
    model's replace them. `hvp_calls` in the record counts the Hessian-vector products (the cost)."""
    model.eval()
    space = Subspace(model)
    vectors = {} if vectors is None else vectors
    present = [g for g, s in enumerate(samples) if len(s.targets)]
    weights = {g: sizes[g] / sizes[present].sum() for g in present}
    groups, grads, hvps, calls = [], {}, {}, [0]

    def group_hvp(v, sample):
        calls[0] += 1
        return hessian_vector_product(model, space, sample, v, batch_size)

    for g, sample in enumerate(samples):
        record = {"size": int(sizes[g]), "sample": len(sample.targets)}
        if g in present:
            record.update(_outputs(model, sample, batch_size))
            grads[g] = gradient(model, space, sample, batch_size)
            record["grad_norm"] = norm(grads[g])
            hvps[g] = lambda v, s=sample: group_hvp(v, s)
            record["hessian_top"], vector = top_eigenvalue(hvps[g], space, iterations, seed, tolerance, vectors.get(g))
            vectors[g] = space.by_name(vector)
        groups.append(record)

    population_grad = combine([grads[g] for g in present], [weights[g] for g in present])

    def population_hvp(v):
        return combine([hvps[g](v) for g in present], [weights[g] for g in present])

    population_top, vector = top_eigenvalue(population_hvp, space, iterations, seed, tolerance,
                                            vectors.get("population"))
    vectors["population"] = space.by_name(vector)
    return {"groups": groups, "population": {"grad_norm": norm(population_grad), "hessian_top": population_top},
            "hvp_calls": calls[0],
            "free_parameters": int(sum(p.numel() if m is None else int(m.sum())
                                       for p, m in zip(space.params, space.masks)))}


def one_shot_model(pruned: nn.Module, dense: nn.Module) -> nn.Module | None:
    """The dense model with the pruned model's zeros: theta_bar = m * theta*, the model right after
    pruning and before any fine-tuning (what Theorem 1 speaks of). None when the shapes differ
    (structured pruning)."""
    a, b = dict(pruned.named_parameters()), dict(dense.named_parameters())
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    twin = copy.deepcopy(dense)
    masks = {id(m.weight): m for m, _ in prunable_weights(pruned, exclude_output_layer=False)}
    with torch.no_grad():
        for (name, param), (_, source) in zip(twin.named_parameters(), pruned.named_parameters()):
            if id(source) in masks:
                param.mul_((source != 0).to(param.dtype))
    return twin


def add_excess_loss_bound(record: dict, dense_record: dict, one_shot_record: dict | None, distance: float) -> dict:
    """Theorem 1 next to the excess loss it bounds: the dense model's g_a and lambda_a, ||theta_bar -
    theta*|| and R(a) of the ONE-SHOT pruned model (before fine-tuning, which the theorem does not
    cover). `bound_ratio` = bound / R(a) says how loose the bound is (NaN where R(a) <= 0); no
    "holds" verdict: the bound is loose by orders of magnitude, so holding says little."""
    record["parameter_distance"] = distance
    for group, dense, shot in zip(record["groups"], dense_record["groups"],
                                  (one_shot_record or {"groups": [{}] * len(record["groups"])})["groups"]):
        if "loss" not in group:
            continue
        group["excess_loss"] = group["loss"] - dense["loss"]  # of the fine-tuned model, for the record
        if "loss" not in shot or not np.isfinite(distance):
            continue
        group["one_shot_excess_loss"] = shot["loss"] - dense["loss"]
        group["bound"] = dense["grad_norm"] * distance + 0.5 * dense["hessian_top"] * distance ** 2
        excess = group["one_shot_excess_loss"]
        group["bound_ratio"] = group["bound"] / excess if excess > 0 else float("nan")
    return record

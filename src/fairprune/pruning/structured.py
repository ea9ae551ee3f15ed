"""Structured methods: remove whole output channels through Torch-Pruning's dependency graph, so
residual additions, BatchNorm and the following layers' inputs stay consistent and the model
becomes physically smaller.

The target sparsity is the fraction of parameters removed. Torch-Pruning takes a channel
ratio, so the ratio that removes the target fraction is found by bisection on copies.
"""
from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from fairprune.models import output_layer
from fairprune.pruning.base import PruneContext, PruningMethod, register

BISECTION_STEPS = 12


class FilterImportance(tp.importance.Importance):
    """One score per channel from the output filters of the group's layers only, summed over
    the layers a residual connection couples. Torch-Pruning's own magnitude/FPGM importances
    also mix in the next layers' input weights, and its FPGM compares |F|^p rather than the
    signed filters of He et al., so both criteria are written here from their papers."""

    OUT_FNS = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_linear_out_channels)

    def __init__(self, filter_score):
        self.filter_score = filter_score

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        total = None
        for dep, idxs in group:
            if dep.pruning_fn in self.OUT_FNS and isinstance(dep.layer, (nn.Conv2d, nn.Linear)):
                filters = dep.layer.weight.data[idxs].flatten(1)
                score = self.filter_score(filters)
                total = score if total is None else total + score
        return total


def l1_norm(filters: torch.Tensor) -> torch.Tensor:
    return filters.abs().sum(dim=1)


def geometric_median_distance(filters: torch.Tensor) -> torch.Tensor:
    """sum_j ||F_i - F_j||_2: small for filters near the geometric median (redundant ones)."""
    return torch.cdist(filters, filters, p=2).sum(dim=1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ChannelPruning(PruningMethod):
    """Uniform per-layer channel pruning with a Torch-Pruning importance criterion."""

    structured = True

    def importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def _pruned_copy(self, model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
        twin = copy.deepcopy(model)
        pruner = tp.pruner.BasePruner(twin, example, importance=self.importance(), pruning_ratio=ratio,
                                      ignored_layers=[output_layer(twin)], global_pruning=False)
        pruner.step()
        return twin

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        if sparsity <= 0:
            return model
        model = model.eval()
        example = torch.rand(1, *ctx.data.input_shape, device=next(model.parameters()).device)
        dense = count_params(model)
        lo, hi, best = 0.0, 0.99, None
        for _ in range(BISECTION_STEPS):
            ratio = (lo + hi) / 2
            candidate = self._pruned_copy(model, ratio, example)
            removed = 1 - count_params(candidate) / dense
            if best is None or abs(removed - sparsity) < abs(best[1] - sparsity):
                best = (candidate, removed)
            lo, hi = (ratio, hi) if removed < sparsity else (lo, ratio)
        return best[0]


@register
class L1Filter(ChannelPruning):
    """L1-norm filter pruning (Li et al. 2017): drop the channels with the smallest L1 norm."""

    name = "l1_filter"

    def importance(self):
        return FilterImportance(l1_norm)


@register
class FPGM(ChannelPruning):
    """FPGM (He et al. 2019): drop the filters nearest the geometric median, score = sum_j ||F_i - F_j||."""

    name = "fpgm"

    def importance(self):
        return FilterImportance(geometric_median_distance)

"""Unstructured methods: a score per weight, the lowest scores masked through torch.nn.utils.prune.

Methods that differ only in their score subclass `ScoredPruning` and implement `scores`;
the global top-k masking is shared.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.errors import ParamsError
from fairprune.pruning.base import PruneContext, PruningMethod, prunable_weights, register


class ScoredPruning(PruningMethod):
    """Global unstructured pruning: keep the (1 - sparsity) fraction of weights with top scores."""

    def scores(self, model: nn.Module, targets: list[tuple[nn.Module, str]], ctx: PruneContext) -> dict | None:
        """{(module, name): score tensor}; None means |weight| (L1 magnitude)."""
        return None

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        targets = prunable_weights(model, ctx.exclude_output_layer)
        if sparsity > 0:
            torch_prune.global_unstructured(
                targets, pruning_method=torch_prune.L1Unstructured,
                importance_scores=self.scores(model, targets, ctx), amount=sparsity)
        return model


@register
class Magnitude(ScoredPruning):
    """Global magnitude pruning (Han et al.): remove the smallest |w| across all layers."""

    name = "magnitude"


@register
class NoPruning(PruningMethod):
    """The dense model through the same fine-tuning and evaluation path (a control)."""

    name = "none"

    def check(self, sparsity: float) -> None:
        if sparsity != 0:
            raise ParamsError("prune.sparsities", sparsity,
                              "0.0 only for method 'none' (it removes nothing); list 'none' in a "
                              "configuration whose prune.sparsities is [0.0], or drop it")

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        return model


__all__ = ["ScoredPruning", "Magnitude", "NoPruning"]

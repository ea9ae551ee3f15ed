"""Unstructured methods: a score per weight; the lowest scores are masked through torch.nn.utils.prune.

Methods that differ only in their score subclass `ScoredPruning` and implement `scores`; the
global top-k masking is shared. Scores are used as they are (not their absolute value), so
signed criteria such as GraSP's rank correctly.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.errors import ParamsError
from fairprune.pruning.base import PruneContext, PruningMethod, keep_top_masks, prunable_weights, register

Targets = list[tuple[nn.Module, str]]


class KeepTopScores(torch_prune.BasePruningMethod):
    """Mask the `amount` fraction of entries with the lowest raw importance score."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: float):
        torch_prune._validate_pruning_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        k = torch_prune._compute_nparams_toprune(self.amount, t.nelement())
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if k:
            lowest = torch.topk(t.reshape(-1), k=k, largest=False).indices
            mask.view(-1)[lowest] = 0
        return mask


class ScoredPruning(PruningMethod):
    """Global unstructured pruning: keep the (1 - sparsity) fraction of weights with top scores."""

    def scores(self, model: nn.Module, targets: Targets, ctx: PruneContext, sparsity: float) -> list[torch.Tensor]:
        """One score tensor per target weight, higher = keep. Default: |w| (magnitude)."""
        return [getattr(m, n).detach().abs() for m, n in targets]

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        targets = prunable_weights(model, ctx.exclude_output_layer)
        if sparsity > 0:
            scores = self.scores(model, targets, ctx, sparsity)
            torch_prune.global_unstructured(
                targets, pruning_method=KeepTopScores, amount=sparsity,
                importance_scores={t: s.to(getattr(t[0], t[1]).device) for t, s in zip(targets, scores)})
        return model


@register
class Magnitude(ScoredPruning):
    """Global magnitude pruning (Han et al.): remove the smallest |w| across all layers."""

    name = "magnitude"


@register
class MagnitudeLayerwise(ScoredPruning):
    """Magnitude pruning at the same rate in every layer (`l1_unstructured` per layer)."""

    name = "magnitude_layerwise"

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        for module, name in prunable_weights(model, ctx.exclude_output_layer):
            if sparsity > 0:
                torch_prune.l1_unstructured(module, name, amount=sparsity)
        return model


@register
class RandomPruning(ScoredPruning):
    """Uniformly random scores, seeded: the baseline every criterion should beat."""

    name = "random"

    def scores(self, model, targets, ctx, sparsity):
        generator = torch.Generator().manual_seed(ctx.seed)
        return [torch.rand(getattr(m, n).shape, generator=generator) for m, n in targets]


def _loss_gradients(model: nn.Module, targets: Targets, ctx: PruneContext,
                    temperature: float = 1.0) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy over the scoring batches w.r.t. the target weights."""
    weights = [getattr(m, n) for m, n in targets]
    total = [torch.zeros_like(w) for w in weights]
    batches = list(ctx.batches())
    for x, y in batches:
        loss = F.cross_entropy(model(x) / temperature, y) / len(batches)
        for acc, g in zip(total, torch.autograd.grad(loss, weights)):
            acc += g
    return total


@register
class Snip(ScoredPruning):
    """SNIP (Lee et al. 2019): connection sensitivity |w * dL/dw| at the starting weights."""

    name = "snip"
    reads = ("score_batches", "score_batch_size")

    def scores(self, model, targets, ctx, sparsity):
        model.eval()
        grads = _loss_gradients(model, targets, ctx)
        return [(getattr(m, n).detach() * g).abs() for (m, n), g in zip(targets, grads)]


@register
class GraSP(ScoredPruning):
    """GraSP (Wang et al. 2020): S = -w * (H g); the weights with the HIGHEST S are removed.

    g is the (temperature-scaled, detached) loss gradient, Hg a Hessian-gradient product by
    double backward. Removing high S keeps the gradient flow; the sign is the usual bug.
    """

    name = "grasp"
    reads = ("score_batches", "score_batch_size", "grasp_temperature")

    def scores(self, model, targets, ctx, sparsity):
        model.eval()
        temperature = ctx.options.get("grasp_temperature", 200.0)
        weights = [getattr(m, n) for m, n in targets]
        g = [t.detach() for t in _loss_gradients(model, targets, ctx, temperature)]
        hg = [torch.zeros_like(w) for w in weights]
        batches = list(ctx.batches())
        for x, y in batches:
            loss = F.cross_entropy(model(x) / temperature, y) / len(batches)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            gz = sum((gi * gd).sum() for gi, gd in zip(grads, g))
            for acc, h in zip(hg, torch.autograd.grad(gz, weights)):
                acc += h
        return [(w.detach() * h) for w, h in zip(weights, hg)]  # = -S: keep the lowest S


@register
class SynFlow(ScoredPruning):
    """SynFlow (Tanaka et al. 2020): data-free |w * dR/dw| with R = 1^T f(1; |w|), pruned
    iteratively over `synflow_rounds` rounds on an exponential schedule (BatchNorm in eval)."""

    name = "synflow"
    reads = ("synflow_rounds",)

    def scores(self, model, targets, ctx, sparsity):
        rounds = ctx.options.get("synflow_rounds", 100)
        probe = copy.deepcopy(model).double().eval()
        index = {id(m): i for i, (m, _) in enumerate(targets)}
        probe_targets = [None] * len(targets)
        for original, twin in zip(model.modules(), probe.modules()):
            if id(original) in index:
                probe_targets[index[id(original)]] = twin
        with torch.no_grad():
            for p in probe.state_dict().values():
                if p.is_floating_point():
                    p.abs_()
        weights = [t.weight for t in probe_targets]
        originals = [w.detach().clone() for w in weights]
        masks = [torch.ones_like(w) for w in weights]
        x = torch.ones((1, *ctx.data.input_shape), dtype=torch.float64, device=next(probe.parameters()).device)
        total = sum(w.numel() for w in weights)
        for r in range(1, rounds + 1):
            with torch.no_grad():
                for w, w0, mask in zip(weights, originals, masks):
                    w.copy_(w0 * mask)
            grads = torch.autograd.grad(probe(x).sum(), weights)
            scores = [(g * w).detach().abs() for g, w in zip(grads, weights)]
            keep = max(1, int(round(total * (1 - sparsity) ** (r / rounds))))
            # Weights pruned in an earlier round rank below every survivor, so masks only shrink.
            masks = keep_top_masks([torch.where(m > 0, s, torch.full_like(s, -1.0)) for s, m in zip(scores, masks)],
                                   keep)
        # Survivors rank by their last score, pruned weights below every survivor.
        return [torch.where(m > 0, s + 1.0, torch.zeros_like(s)).float() for s, m in zip(scores, masks)]


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

"""The method interface, the registry and the bookkeeping every method shares."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.errors import ParamsError

_REGISTRY: dict[str, type["PruningMethod"]] = {}


@dataclass
class PruneContext:
    data: object  # PreparedData: methods that score with data read its train split
    device: torch.device
    seed: int = 0
    exclude_output_layer: bool = True
    options: dict = field(default_factory=dict)
    # For methods that train while pruning (IMP): retrain(model, epochs, description),
    # the early iterate to rewind to, and a metrics logger log(metrics, step).
    retrain: Callable[[nn.Module, int, str], object] | None = None
    rewind_state: dict | None = None
    log: Callable[[dict, int], None] | None = None

    def batches(self):
        """The first `score_batches` shuffled training batches (seeded), as float inputs on the device."""
        count, size = self.options.get("score_batches", 4), self.options.get("score_batch_size", 128)
        images, targets, _ = self.data.subset("train")
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(self.seed))
        for i in range(min(count, -(-len(targets) // size))):
            idx = order[i * size:(i + 1) * size]
            yield images[idx].float().div(255.0).to(self.device), targets[idx].to(self.device)


class PruningMethod:
    """Subclasses set `name` and implement `prune`; `structured` methods shrink the model."""

    name: str = ""
    structured: bool = False
    # True for methods that fine-tune with their own step (BiFP, CEAG): they implement
    # training_step(model, optimizer, device), and a +fair_aft arm would be ignored.
    owns_finetuning: bool = False
    # The `prune.*` settings it reads from ctx.options, and nothing else: its stage depends on exactly
    # these (fairprune.pruning.finetune.method_params), so a change elsewhere does not rerun it.
    reads: tuple[str, ...] = ()

    def check(self, sparsity: float) -> None:
        """Raise ParamsError when this method cannot reach `sparsity`."""

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        raise NotImplementedError

    def before_finetune_epoch(self, model: nn.Module, epoch: int, total_epochs: int) -> None:
        """Called before each fine-tuning epoch; gradual methods update their masks here."""

    def finish(self, model: nn.Module) -> nn.Module:
        """Called after fine-tuning; methods that train a structured mask export the smaller model here."""
        return model


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> PruningMethod:
    if name not in _REGISTRY:
        raise ParamsError("prune.methods", name, f"one of: {', '.join(available_methods())}")
    return _REGISTRY[name]()


def prunable_weights(model: nn.Module, exclude_output_layer: bool = True) -> list[tuple[nn.Module, str]]:
    """(module, 'weight') for every Conv2d and Linear layer, optionally without the classifier.

    The output layer is usually kept dense: it is tiny, and emptying it can remove a class.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if exclude_output_layer and len(layers) > 1:
        layers = layers[:-1]
    return [(m, "weight") for m in layers]


def effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    """weight_orig * mask when pruning hooks are attached; `module.weight` there is only refreshed
    by the next forward pass, so it is stale right after an optimizer step or a mask update."""
    if hasattr(module, f"{name}_orig"):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def round_densities(sparsity: float, keep_per_round: float) -> list[float]:
    """The fraction of weights kept after each round of an iterative method that keeps `keep_per_round`
    of the remaining weights per round, the last round stopping exactly at 1 - sparsity."""
    rounds = max(1, math.ceil(math.log(1 - sparsity) / math.log(keep_per_round) - 1e-9))
    return [max(1 - sparsity, keep_per_round ** r) for r in range(1, rounds + 1)]


def keep_top_masks(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Global 0/1 masks (shaped like `scores`) keeping the `keep` highest scores across all tensors."""
    return GlobalTopMasks(keep)(scores)


class GlobalTopMasks:
    """`keep_top_masks` for scores that drift a little between calls (BiFP's, at every score step).

    The threshold is the keep-th highest score. A threshold instead of topk's indices is 3x faster
    on 5M scores on the CPU, and a full selection (kthvalue) still costs about half a ResNet-10
    forward pass; so each call first looks for the new threshold among the scores in a window
    around the last one, twice as wide as the last move (shrinking slowly), and only when it is not there selects among all
    of them. The masks are exact either way; of tied scores at the threshold the first are kept."""

    def __init__(self, keep: int):
        self.keep, self.window, self.threshold = keep, None, None
        self.calls, self.full_selections = 0, 0  # how often the window missed: see benchmarks/bench_bifp.py

    def __call__(self, scores: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([s.flatten() for s in scores])
        keep = min(self.keep, flat.numel())
        if keep <= 0:
            mask = torch.zeros_like(flat)
        elif flat.is_cuda:
            mask = self.select_on_device(flat, keep)
        else:
            threshold = self.kth_highest(flat, keep)
            kept = flat >= threshold
            surplus = int(torch.count_nonzero(kept)) - keep
            if surplus > 0:
                ties = torch.nonzero(flat == threshold).flatten()
                kept[ties[len(ties) - surplus:]] = False
            mask = kept.to(flat.dtype)
        return [part.view_as(s) for part, s in zip(mask.split([s.numel() for s in scores]), scores)]

    def select_on_device(self, flat: torch.Tensor, keep: int) -> torch.Tensor:
        """The GPU path: each count read back to the host (as the window needs) drains the launch
        queue, which costs more than a full sort of the scores there. The sort gives the threshold;
        a running count over the tied scores keeps the first of them, as on the CPU."""
        self.calls += 1
        self.full_selections += 1
        threshold = flat.sort().values[flat.numel() - keep]
        above, ties = flat > threshold, flat == threshold
        room = keep - torch.count_nonzero(above)
        return (above | (ties & (torch.cumsum(ties, 0) <= room))).to(flat.dtype)

    def kth_highest(self, flat: torch.Tensor, keep: int) -> torch.Tensor:
        rank = flat.numel() - keep + 1  # kthvalue counts from the lowest
        threshold = None
        if self.window is not None:
            low, high = self.window
            below = int(torch.count_nonzero(flat < low))
            inside = flat[(flat >= low) & (flat <= high)]
            if below < rank <= below + inside.numel():
                threshold = torch.kthvalue(inside, rank - below).values
        if threshold is None:
            threshold = torch.kthvalue(flat, rank).values
            self.full_selections += 1
        self.calls += 1
        value = float(threshold)
        move = abs(value - self.threshold) if self.threshold is not None else 0.0
        last_width = (self.window[1] - self.window[0]) / 2 if self.window is not None else 0.0
        width = max(2 * move, last_width / 2, 1e-6 * abs(value), torch.finfo(flat.dtype).tiny)
        self.threshold, self.window = value, (value - width, value + width)
        return threshold


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every torch.nn.utils.prune mask into its weight (zeros stay zeros)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model


def measure_sparsity(model: nn.Module, exclude_output_layer: bool = True) -> dict[str, float | int]:
    """Parameter counts and the fraction of zero weights in the prunable layers."""
    prunable = prunable_weights(model, exclude_output_layer)
    zeros = sum(int((effective_weight(m, n) == 0).sum()) for m, n in prunable)
    total = sum(getattr(m, n).numel() for m, n in prunable)
    params = list(model.parameters())
    return {
        "sparsity_actual": zeros / max(total, 1),
        "prunable_total": total,
        "params_total": sum(p.numel() for p in params),
        "params_nonzero": sum(int((p != 0).sum()) for p in params),
    }

"""Methods that prune while training: Lottery-Ticket IMP and gradual magnitude pruning (GMP)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.errors import DataError
from fairprune.pruning.base import (PruneContext, PruningMethod, effective_weight, keep_top_masks,
                                   make_permanent, prunable_weights, register, round_densities)


def global_magnitude_masks(targets, sparsity: float) -> list[torch.Tensor]:
    """Masks keeping the round((1 - sparsity) * total) largest |effective weight| across layers."""
    magnitudes = [effective_weight(m, n).detach().abs() for m, n in targets]
    return keep_top_masks(magnitudes, int(round((1 - sparsity) * sum(w.numel() for w in magnitudes))))


@register
class IterativeMagnitude(PruningMethod):
    """Lottery-Ticket IMP (Frankle & Carbin): prune 20 % of the remaining weights (global magnitude),
    rewind the survivors to the early iterate theta_k (`train.rewind_epoch`) and retrain for
    `prune.imp_round_epochs`; n rounds give sparsity 1 - 0.8^n. The last round stops at the target
    sparsity and its retraining is the stage's fine-tuning."""

    name = "imp"
    reads = ("imp_round_epochs",)
    RATE = 0.2

    @staticmethod
    def rounds_for(sparsity: float) -> int:
        return len(round_densities(sparsity, 1 - IterativeMagnitude.RATE))

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        if sparsity <= 0:
            return model
        if ctx.rewind_state is None:
            raise DataError("the dense checkpoint holds no rewind state for IMP; keep train.rewind_epoch "
                            "<= train.epochs and rerun the train stage")
        densities = round_densities(sparsity, 1 - self.RATE)
        rounds = len(densities)
        for r, density in enumerate(densities, start=1):
            targets = prunable_weights(model, ctx.exclude_output_layer)
            masks = global_magnitude_masks(targets, 1 - density)
            make_permanent(model)
            model.load_state_dict(ctx.rewind_state)
            for (module, name), mask in zip(prunable_weights(model, ctx.exclude_output_layer), masks):
                torch_prune.custom_from_mask(module, name, mask.to(getattr(module, name).device))
            if ctx.log:
                ctx.log({"imp/round": r, "imp/sparsity": 1 - density}, r)
            if r < rounds and ctx.retrain is not None:
                ctx.retrain(model, ctx.options.get("imp_round_epochs", 2), f"imp round {r}/{rounds}")
        return model


@register
class GradualMagnitude(PruningMethod):
    """GMP (Zhu & Gupta 2017): during fine-tuning, global magnitude masks grow on the cubic schedule
    s_t = s_f (1 - (1 - t/T)^3), t counting epochs and T = ceil(fraction * epochs); from epoch T on
    (with fraction 1: the last epoch) it trains at the target sparsity."""

    name = "gmp"
    fraction = 1.0  # of the fine-tuning epochs over which the sparsity grows (CEAG's protocol: 0.25)

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        self.final, self.exclude_output_layer = sparsity, ctx.exclude_output_layer
        for module, name in prunable_weights(model, ctx.exclude_output_layer):
            torch_prune.identity(module, name)
        if not ctx.options.get("finetune_epochs"):
            self._set_masks(model, sparsity)
        return model

    def schedule(self, epoch: int, total_epochs: int) -> float:
        pruning = max(1, math.ceil(self.fraction * total_epochs))
        return self.final * (1 - (1 - min(epoch + 1, pruning) / pruning) ** 3)

    def before_finetune_epoch(self, model: nn.Module, epoch: int, total_epochs: int) -> None:
        self._set_masks(model, self.schedule(epoch, total_epochs))

    def _set_masks(self, model: nn.Module, sparsity: float) -> None:
        targets = prunable_weights(model, self.exclude_output_layer)
        with torch.no_grad():
            for (module, name), mask in zip(targets, global_magnitude_masks(targets, sparsity)):
                getattr(module, f"{name}_mask").copy_(mask)

"""CEAG and its comparison arm as pruning methods (the constraints are in fairness.excess_gap;
settings in `prune.ceag`).

- `ceag`: one-shot global magnitude pruning, then fine-tuning under the excess-accuracy-gap
  constraints (psi_a <= tolerance for every group).
- `ceag_gmp`: the authors' protocol: gradual magnitude pruning (cubic schedule) over the first
  `gmp_fraction` of the fine-tuning epochs with plain steps, then the constrained fine-tuning at
  the target sparsity (their apply_mitigation_while_pruning = False).
- `equal_loss_buffer`: one-shot magnitude, then |J_a - J| <= tolerance with the replay buffer
  (their second arm; without the buffer it is `magnitude+fair_aft`).
The dense references are measured once, on the training split, before anything is removed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fairprune.config import CeagParams
from fairprune.evaluation import evaluate_split
from fairprune.fairness.constraints import ConstrainedStep
from fairprune.fairness.excess_gap import DenseReference, ExcessGapProblem
from fairprune.pruning.base import PruneContext, PruningMethod, register
from fairprune.pruning.iterative import GradualMagnitude
from fairprune.pruning.unstructured import Magnitude
from fairprune.training import PlainStep


class SwitchedStep:
    """Plain steps while the mask is still growing (GMP), constrained steps afterwards."""

    def __init__(self, plain: PlainStep, constrained: ConstrainedStep):
        self.plain, self.constrained, self.active = plain, constrained, True

    def __call__(self, x, y, groups):
        return (self.constrained if self.active else self.plain)(x, y, groups)

    def state_dict(self) -> dict:
        return self.constrained.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.constrained.load_state_dict(state)


@register
class Ceag(PruningMethod):
    """One-shot magnitude pruning, then fine-tuning under CEAG's per-group excess-gap constraints."""

    name = "ceag"
    reads = ("ceag", "score_batch_size")
    owns_finetuning = True
    constraint = "accuracy_gap"
    gradual = False

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        self.settings = CeagParams(**ctx.options.get("ceag", {}))
        dense = evaluate_split(model, ctx.data, "train", ctx.options.get("score_batch_size", 512), ctx.device)
        self.reference = DenseReference.from_stats(dense.stats(), ctx.device)
        self.data, self.log = ctx.data, ctx.log
        if self.gradual:
            self.pruner = GradualMagnitude()
            self.pruner.fraction = self.settings.gmp_fraction
            return self.pruner.prune(model, sparsity, ctx)
        return Magnitude().prune(model, sparsity, ctx)

    def pruning_epochs(self, total_epochs: int) -> int:
        return math.ceil(self.settings.gmp_fraction * total_epochs) if self.gradual else 0

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> SwitchedStep:
        problem = ExcessGapProblem(model, self.data.num_groups, self.reference, tolerance=self.settings.tolerance,
                                   buffer=self.settings.buffer, constraint=self.constraint, device=device)
        constrained = ConstrainedStep(model, optimizer, self.data.num_groups, self.settings, device, self.log,
                                      problem=problem, where="prune.ceag",
                                      group_names=list(getattr(self.data, "group_names", [])))
        self.step = SwitchedStep(PlainStep(model, optimizer, device), constrained)
        return self.step

    def before_finetune_epoch(self, model: nn.Module, epoch: int, total_epochs: int) -> None:
        if self.gradual:
            self.pruner.before_finetune_epoch(model, epoch, total_epochs)
        if getattr(self, "step", None) is not None:
            self.step.active = epoch >= self.pruning_epochs(total_epochs)


@register
class CeagGradual(Ceag):
    """CEAG with gradual magnitude pruning over the first quarter of the fine-tuning (their protocol)."""

    name = "ceag_gmp"
    gradual = True


@register
class EqualLossBuffer(Ceag):
    """The authors' equal-loss arm with the replay buffer: |J_a - J| <= tolerance, dual on buffered losses."""

    name = "equal_loss_buffer"
    constraint = "equal_loss"

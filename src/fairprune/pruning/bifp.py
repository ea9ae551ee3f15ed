"""BiFP: the pruning mask (upper level) and the weights (lower level) learned together, both under a
differentiable accuracy-parity term (METHODS.md section 4; settings in `prune.bifp`).

`prune` installs the first hard mask (global top-k of the scores, initialised from |theta| so it
is magnitude pruning's, or random) through torch.nn.utils.prune; the fine-tuning epochs then run
`BifpStep` instead of plain SGD. Every K + 1 batches form one outer iteration:
- K weight steps, mask fixed: task loss + lambda_w * F on theta (the fine-tuning optimiser);
- one score step, weights fixed: task loss + lambda_m * F, whose gradient with respect to the
  masked weights z = m * theta gives, from that one backward,
      grad_scores = dL/dz * theta  -  ig_scale * dL/dz * (dL/dz * m)
  (straight-through to the scores, then BiP's first-order implicit-gradient correction
  -(1/gamma) grad_z L * grad_theta L with grad_theta L = grad_z L * m); then the hard mask is
  recomputed at exactly the target sparsity.
F is `parity_penalty` (half the difference of Wu et al.'s F and its mirror, see fairness.surrogate). `bifp_lagrangian`
instead constrains each group's surrogate error to at most the groups' mean + `tolerance`, with one
cooper multiplier per group, updated by dual ascent at every weight step and used by both levels.
"""
from __future__ import annotations

import cooper
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.config import BifpParams
from fairprune.device import autocast
from fairprune.fairness.surrogate import parity_penalty, surrogate_errors
from fairprune.pruning.base import PruneContext, PruningMethod, keep_top_masks, prunable_weights, register
from fairprune.pruning.unstructured import KeepTopScores


class BifpUnstructured(PruningMethod):
    """A score per weight, global top-k hard mask, straight-through to the scores."""

    name = "bifp_uns"
    trains_mask = True
    overrides: dict = {}  # ablations fix some settings
    lagrangian = False

    def settings(self, ctx: PruneContext) -> BifpParams:
        return BifpParams(**{**ctx.options.get("bifp", {}), **self.overrides})

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        self.bifp = self.settings(ctx)
        self.targets = prunable_weights(model, ctx.exclude_output_layer)
        weights = [getattr(m, n).detach() for m, n in self.targets]
        if self.bifp.score_init == "magnitude":
            self.scores = [w.abs().clone() for w in weights]
        else:
            generator = torch.Generator().manual_seed(ctx.seed)
            self.scores = [torch.rand(w.shape, generator=generator).to(w.device) * w.abs().mean() for w in weights]
        total = sum(w.numel() for w in weights)
        self.keep = total - torch_prune._compute_nparams_toprune(sparsity, total)
        self.num_groups = ctx.data.num_groups
        torch_prune.global_unstructured(self.targets, pruning_method=KeepTopScores, amount=sparsity,
                                        importance_scores=dict(zip(self.targets, self.scores)))
        return model

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> "BifpStep":
        return BifpStep(model, optimizer, self.targets, self.scores, self.keep, self.num_groups, self.bifp,
                        device, self.lagrangian)


class BifpStep:
    """One batch of BiFP's alternation; a drop-in for training.PlainStep inside training.fit."""

    def __init__(self, model, optimizer, targets, scores, keep: int, num_groups: int, bifp: BifpParams,
                 device: torch.device, lagrangian: bool):
        self.model, self.optimizer, self.targets, self.keep = model, optimizer, targets, keep
        self.num_groups, self.bifp, self.device = num_groups, bifp, device
        self.scores = [s.to(device).requires_grad_() for s in scores]
        self.score_optimizer = torch.optim.Adam(self.scores, lr=bifp.score_lr)
        self.calls = 0
        self.multiplier = None
        if lagrangian:
            self.multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_groups, device=device)
            self.multiplier.set_constraint_type(cooper.ConstraintType.INEQUALITY)
            self.dual_optimizer = torch.optim.SGD(self.multiplier.parameters(), lr=bifp.dual_lr, maximize=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.calls % (self.bifp.inner_steps + 1) == 0:
            return self._score_step(x, y, groups)
        return self._weight_step(x, y, groups)

    def _objective(self, logits, y, groups, fairness_weight: float):
        """(the level's loss, the task loss, the Lagrangian variant's violations and their groups)."""
        task = F.cross_entropy(logits.float(), y)
        if self.multiplier is None:
            if fairness_weight == 0:
                return task, task, None
            penalty = parity_penalty(logits, y, groups, self.num_groups, self.bifp.surrogate)
            return task + fairness_weight * penalty, task, None
        errors, counts = surrogate_errors(logits, y, groups, self.num_groups, self.bifp.surrogate)
        present = torch.nonzero(counts).flatten()
        violation = errors[present] - errors[present].mean() - self.bifp.tolerance
        lagrangian = task + (self.multiplier(present).detach() * violation).sum()
        return lagrangian, task, (violation.detach(), present)

    def _weight_step(self, x, y, groups):
        with autocast(self.device):
            logits = self.model(x)
        loss, task, constraint = self._objective(logits, y, groups, self.bifp.lambda_w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if constraint is not None:
            violation, present = constraint
            self.dual_optimizer.zero_grad(set_to_none=True)
            self.multiplier.weight.grad = torch.zeros_like(self.multiplier.weight)
            self.multiplier.weight.grad[present] = violation.to(self.multiplier.weight.dtype).view(-1, 1)
            self.dual_optimizer.step()
            self.multiplier.post_step_()
        return task.detach(), logits.detach()

    def _score_step(self, x, y, groups):
        with autocast(self.device):
            logits = self.model(x)
        loss, task, _ = self._objective(logits, y, groups, self.bifp.lambda_m)
        masked = [getattr(m, n) for m, n in self.targets]  # the pruning hook's m * theta of this forward
        grads = torch.autograd.grad(loss, masked)
        with torch.no_grad():
            for score, g, (module, name) in zip(self.scores, grads, self.targets):
                theta, mask = getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask")
                g = g.to(score.dtype)
                score.grad = g * theta - self.bifp.ig_scale * g * (g * mask)
            self.score_optimizer.step()
            self.refresh_masks()
        return task.detach(), logits.detach()

    def refresh_masks(self) -> None:
        with torch.no_grad():
            for mask, (module, name) in zip(keep_top_masks([s.detach() for s in self.scores], self.keep),
                                            self.targets):
                getattr(module, f"{name}_mask").copy_(mask)

    def state_dict(self) -> dict:
        state = {"scores": [s.detach().cpu() for s in self.scores], "calls": self.calls,
                 "score_optimizer": self.score_optimizer.state_dict()}
        if self.multiplier is not None:
            state.update(multiplier=self.multiplier.state_dict(), dual_optimizer=self.dual_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for score, saved in zip(self.scores, state["scores"]):
                score.copy_(saved)
        self.calls = state["calls"]
        self.score_optimizer.load_state_dict(state["score_optimizer"])
        if self.multiplier is not None:
            self.multiplier.load_state_dict(state["multiplier"])
            self.dual_optimizer.load_state_dict(state["dual_optimizer"])
        self.refresh_masks()


def _variant(name: str, doc: str, lagrangian: bool = False, **overrides) -> type[BifpUnstructured]:
    cls = type(f"Bifp_{name}", (BifpUnstructured,), {"name": name, "__doc__": doc, "overrides": overrides,
                                                       "lagrangian": lagrangian})
    return register(cls)


register(BifpUnstructured)
_variant("bifp_lagrangian", "BiFP with one Lagrange multiplier per group instead of lambda_w, lambda_m.",
         lagrangian=True)
_variant("bifp_no_mask_fair", "Ablation: no fairness term in the scores' loss (lambda_m = 0).", lambda_m=0.0)
_variant("bifp_no_weight_fair", "Ablation: no fairness term in the weights' loss (lambda_w = 0).", lambda_w=0.0)
_variant("bifp_no_fair", "Ablation: no fairness term at either level.", lambda_m=0.0, lambda_w=0.0)
_variant("bifp_no_ig", "Ablation: no implicit-gradient correction (ig_scale = 0).", ig_scale=0.0)

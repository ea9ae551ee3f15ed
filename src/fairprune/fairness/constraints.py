"""Tran et al.'s mitigation (METHODS.md section 3): constrained ERM solved by Lagrangian duality.

relaxed (Eq. 8):  min J(theta; D)  s.t.  J(theta; D_a) - J(theta; D) = 0             for every group a
full (Eq. 7):     additionally         ||g_a|| - ||g|| = 0,  lambda(H_a) - lambda(H) = 0

Every constraint family has one Lagrange multiplier per group (cooper's IndexedMultiplier, so a
mini-batch that misses a group leaves that group's multiplier untouched), updated by dual ascent
before each primal step (cooper's AlternatingDualPrimalOptimizer).

How the full version stays affordable:
- J = sum_a (n_a / n) J_a on a batch, so the population gradient is the weighted sum of the
  group gradients: G backward passes (with graph, for the primal gradient of the norms) and no
  extra one for the population.
- The eigenvalue terms use the Rayleigh quotient v_a^T H_a v_a at the current power-iteration
  vector v_a (by Danskin's theorem its gradient is the eigenvalue's). The vectors are refined by
  `hessian_iterations` warm-started power steps every `hessian_every` steps; in between, the
  Hessian constraints are not observed (their multipliers keep their values). `grad_norm_every`
  does the same for the gradient-norm constraints (1 = every step, as in the paper).
A positive `tolerance` turns each equality into |violation| <= tolerance.
"""
from __future__ import annotations

from typing import Callable

import cooper
import torch
import torch.nn.functional as F
from torch import nn

from fairprune.config import MitigationParams
from fairprune.device import autocast
from fairprune.errors import TrainingDiverged

CONSTRAINTS = {"relaxed": ("loss",), "full": ("loss", "grad_norm", "hessian")}


def group_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group means of a per-sample tensor (differentiable) and the per-group counts."""
    counts = torch.bincount(groups, minlength=num_groups).to(values.dtype)
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    return sums / counts.clamp(min=1), counts


def _flat_dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _flat_norm(tensors) -> torch.Tensor:
    return torch.sqrt(sum((t ** 2).sum() for t in tensors) + 1e-12)


class GroupFairnessProblem(cooper.ConstrainedMinimizationProblem):
    """Equal group loss (and, for `full`, equal gradient norm and Hessian top eigenvalue) per group."""

    def __init__(self, model: nn.Module, num_groups: int, params: MitigationParams, device: torch.device):
        super().__init__()
        self.model, self.num_groups, self.params, self.device = model, num_groups, params, device
        self.kinds = CONSTRAINTS[params.variant]
        kind = cooper.ConstraintType.INEQUALITY if params.tolerance > 0 else cooper.ConstraintType.EQUALITY
        for name in self.kinds:
            multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_groups, device=device)
            setattr(self, name, cooper.Constraint(constraint_type=kind, multiplier=multiplier))
        self.eigenvectors: dict[int, list[torch.Tensor]] = {}
        self.step_count = 0

    def _violation(self, values: torch.Tensor, present: torch.Tensor) -> cooper.ConstraintState:
        if self.params.tolerance > 0:
            values = values.abs() - self.params.tolerance
        return cooper.ConstraintState(violation=values, constraint_features=present)

    def _due(self, every: int) -> bool:
        return self.step_count % every == 0

    def compute_cmp_state(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> cooper.CMPState:
        with autocast(self.device):
            logits = self.model(x)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        loss = per_sample.mean()
        group_loss, counts = group_means(per_sample, groups, self.num_groups)
        present = torch.nonzero(counts).flatten()
        observed = {self.loss: self._violation(group_loss[present] - loss, present)}
        misc = {"logits": logits.detach(), "group_loss": group_loss.detach(), "present": present}
        need_grads = "grad_norm" in self.kinds and (
            self._due(self.params.grad_norm_every) or self._due(self.params.hessian_every))
        if need_grads:
            params = [p for p in self.model.parameters() if p.requires_grad]
            weights = counts[present] / counts.sum()
            grads = [torch.autograd.grad(group_loss[g], params, create_graph=True, retain_graph=True)
                     for g in present.tolist()]
            population = [sum(w * g[i] for w, g in zip(weights, grads)) for i in range(len(params))]
            if self._due(self.params.grad_norm_every):
                norms = torch.stack([_flat_norm(g) for g in grads])
                observed[self.grad_norm] = self._violation(norms - _flat_norm(population), present)
                misc["grad_norm"] = norms.detach()
            if self._due(self.params.hessian_every):
                eig = self._eigenvalues(params, grads, population, present.tolist())
                observed[self.hessian] = self._violation(eig[:-1] - eig[-1], present)
                misc["hessian_top"] = eig.detach()
        self.step_count += 1
        return cooper.CMPState(loss=loss, observed_constraints=observed, misc=misc)

    def _eigenvalues(self, params, grads, population, present: list[int]) -> torch.Tensor:
        """Differentiable Rayleigh quotients v^T H v per present group, then the population's last."""
        quotients = []
        for key, grad in [*zip(present, grads), (-1, population)]:
            v = self.eigenvectors.get(key)
            if v is None or any(a.shape != p.shape for a, p in zip(v, params)):
                generator = torch.Generator().manual_seed(1000 + key)
                v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
            for _ in range(self.params.hessian_iterations):
                hv = torch.autograd.grad(_flat_dot(grad, v), params, retain_graph=True)
                norm = float(_flat_norm(hv))
                v = [h / norm for h in hv]
            self.eigenvectors[key] = [t.detach() for t in v]
            hv = torch.autograd.grad(_flat_dot(grad, v), params, create_graph=True, retain_graph=True)
            quotients.append(_flat_dot(v, hv))
        return torch.stack(quotients)


class ConstrainedStep:
    """One training step of the constrained problem: dual ascent, then the primal step."""

    def __init__(self, model: nn.Module, primal: torch.optim.Optimizer, num_groups: int,
                 params: MitigationParams, device: torch.device, log: Callable[[dict, int], None] | None = None):
        self.problem = GroupFairnessProblem(model, num_groups, params, device)
        dual_params = list(self.problem.dual_parameters())
        if params.dual_optimizer == "adam":
            dual = torch.optim.SparseAdam(dual_params, lr=params.dual_lr, maximize=True)
        else:
            dual = torch.optim.SGD(dual_params, lr=params.dual_lr, maximize=True)
        self.optimizer = cooper.optim.AlternatingDualPrimalOptimizer(
            cmp=self.problem, primal_optimizers=primal, dual_optimizers=dual)
        self.params, self.log, self.step_index = params, log, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rollout = self.optimizer.roll(compute_cmp_state_kwargs={"x": x, "y": y, "groups": groups})
        self.step_index += 1
        if self.step_index % self.params.log_every == 0:
            self.check_finite()
            if self.log:
                self.log(self.snapshot(rollout.cmp_state), self.step_index)
        return rollout.loss.detach(), rollout.cmp_state.misc["logits"]

    def check_finite(self) -> None:
        for name, values in self.multipliers().items():
            if not torch.isfinite(values).all():
                raise TrainingDiverged(
                    f"the Lagrange multipliers of the '{name}' constraints diverged ({values.tolist()}) by step "
                    f"{self.step_index}; lower mitigation.dual_lr (now {self.params.dual_lr}) or raise "
                    f"mitigation.tolerance")

    def multipliers(self) -> dict[str, torch.Tensor]:
        return {name: m.weight.detach().flatten().cpu() for name, m in self.problem.named_multipliers()}

    def snapshot(self, state: cooper.CMPState) -> dict[str, float]:
        """Multipliers, violations and per-group losses of one step, flat for MLflow."""
        record = {"mitigation/loss": float(state.loss.detach())}
        for name, values in self.multipliers().items():
            record.update({f"multiplier/{name}/{g}": float(v) for g, v in enumerate(values)})
        for constraint, cstate in state.observed_constraints.items():
            for g, v in zip(cstate.constraint_features.tolist(), cstate.violation.detach().tolist()):
                record[f"violation/{constraint.name}/{g}"] = v
        for g in state.misc["present"].tolist():
            record[f"group_loss/{g}"] = float(state.misc["group_loss"][g])
        return record

    def state_dict(self) -> dict:
        return {"problem": self.problem.state_dict(), "optimizer": self.optimizer.state_dict(),
                "eigenvectors": {k: [t.cpu() for t in v] for k, v in self.problem.eigenvectors.items()},
                "step_count": self.problem.step_count, "step_index": self.step_index}

    def load_state_dict(self, state: dict) -> None:
        self.problem.load_state_dict(state["problem"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.problem.eigenvectors = {k: [t.to(self.problem.device) for t in v]
                                     for k, v in state["eigenvectors"].items()}
        self.problem.step_count, self.step_index = state["step_count"], state["step_index"]

"""Tran et al.'s mitigation (METHODS.md section 3): constrained ERM solved by Lagrangian duality.

relaxed (Eq. 8):  min J(theta; D)  s.t.  J(theta; D_a) - J(theta; D) = 0             for every group a
full (Eq. 7):     additionally         ||g_a|| - ||g|| = 0,  lambda(H_a) - lambda(H) = 0

Every constraint family has one Lagrange multiplier per group (cooper's IndexedMultiplier, so a
mini-batch that misses a group leaves that group's multiplier untouched), updated by dual ascent
before each primal step (cooper's AlternatingDualPrimalOptimizer).

How the full version stays affordable: only first-order backward passes, no double backward.
- Per-group gradients g_a come from one pass over the batch split by group (BatchNorm in eval
  mode, so the extra passes leave its running statistics alone); the population gradient is
  their size-weighted sum, g = sum_a (n_a / n) g_a.
- The primal gradient of ||g_a|| - ||g|| is H_a g_a/||g_a|| - H g/||g||, each Hessian-vector
  product a forward difference of gradients, (grad J_a(theta + eps d) - g_a) / eps.
- lambda(H_a) is the Rayleigh quotient at a warm-started power-iteration vector v_a (finite-
  difference Hessian-vector products); its gradient, v^T (dH_a) v by Danskin's theorem, is the
  second difference (grad J_a(theta + eps v) - 2 g_a + grad J_a(theta - eps v)) / eps^2. These
  terms are refreshed every `hessian_every` steps; in between the Hessian constraints are not
  observed (their multipliers keep their values). `grad_norm_every` does the same for the
  gradient-norm constraints (1 = every step, as in the paper).
- Each measured violation enters cooper as value + <theta - theta.detach(), gradient estimate>,
  whose value is the violation and whose gradient is the estimate.
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
from fairprune.fairness.vectors import combine, norm, power_iteration

CONSTRAINTS = {"relaxed": ("loss",), "full": ("loss", "grad_norm", "hessian")}


def group_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group means of a per-sample tensor (differentiable) and the per-group counts."""
    counts = torch.bincount(groups, minlength=num_groups).to(values.dtype)
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    return sums / counts.clamp(min=1), counts


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
        counts = torch.bincount(groups, minlength=self.num_groups)
        present = torch.nonzero(counts).flatten()
        misc = {"present": present}
        observed = {}
        if "grad_norm" in self.kinds:
            # Before the main forward: the finite differences move the weights in place.
            observed.update(self._second_order_constraints(x, y, groups, counts, present, misc))
        with autocast(self.device):
            logits = self.model(x)
        per_sample = F.cross_entropy(_full_precision(logits), y, reduction="none")
        loss = per_sample.mean()
        group_loss, _ = group_means(per_sample, groups, self.num_groups)
        observed = {self.loss: self._violation(group_loss[present] - loss, present), **observed}
        misc.update(logits=logits.detach(), group_loss=group_loss.detach())
        self.step_count += 1
        return cooper.CMPState(loss=loss, observed_constraints=observed, misc=misc)

    def _second_order_constraints(self, x, y, groups, counts, present, misc) -> dict:
        norms_due, hessian_due = self._due(self.params.grad_norm_every), self._due(self.params.hessian_every)
        if not (norms_due or hessian_due):
            return {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        chunks = [(x[groups == g], y[groups == g]) for g in present.tolist()]
        weights = (counts[present] / counts.sum()).tolist()
        eps = self.params.fd_step
        was_training = self.model.training
        self.model.eval()
        try:
            grads = [self._gradient(params, chunk) for chunk in chunks]
            population = combine(grads, weights)
            observed = {}
            if norms_due:
                norms = [norm(g) for g in grads]
                pop_norm = norm(population)
                pop_dir = [t / pop_norm for t in population]
                h_pop = combine([_fd_hvp(self._gradient(params, c, pop_dir, eps), g, eps)
                                  for c, g in zip(chunks, grads)], weights)
                estimates = [[h - q for h, q in zip(_fd_hvp(self._gradient(params, c, [t / n for t in g], eps), g, eps),
                                                     h_pop)] for c, g, n in zip(chunks, grads, norms)]
                values = torch.tensor([n - pop_norm for n in norms], device=self.device)
                observed[self.grad_norm] = self._violation(_surrogate(values, estimates, params), present)
                misc["grad_norm"] = torch.tensor(norms)
            if hessian_due:
                eig, estimates = self._eigenvalues(params, chunks, grads, weights, present.tolist(), eps)
                values = eig[:-1] - eig[-1]
                gaps = [[a - b for a, b in zip(e, estimates[-1])] for e in estimates[:-1]]
                observed[self.hessian] = self._violation(_surrogate(values, gaps, params), present)
                misc["hessian_top"] = eig
        finally:
            self.model.train(was_training)
        return observed

    def _gradient(self, params, chunk, direction=None, eps: float = 0.0) -> list[torch.Tensor]:
        """grad of the chunk's mean loss at theta + eps * direction (first order, no graph kept)."""
        saved = [p.detach().clone() for p in params] if direction is not None else None
        if direction is not None:
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(d, alpha=eps)
        try:
            with autocast(self.device):
                logits = self.model(chunk[0])
            loss = F.cross_entropy(_full_precision(logits), chunk[1])
            return [g.detach() for g in torch.autograd.grad(loss, params)]
        finally:
            if saved is not None:
                with torch.no_grad():
                    for p, original in zip(params, saved):
                        p.copy_(original)

    def _eigenvalues(self, params, chunks, grads, weights, present: list[int], eps: float):
        """Top Hessian eigenvalue per present group and of the population (last), by warm-started power
        iteration on finite-difference Hessian-vector products, with each eigenvalue's gradient."""
        def group_hvp(i):
            return lambda v: _fd_hvp(self._gradient(params, chunks[i], v, eps), grads[i], eps)

        def population_hvp(v):
            return combine([group_hvp(i)(v) for i in range(len(chunks))], weights)

        values, estimates = [], []
        for key, hvp in [*[(g, group_hvp(i)) for i, g in enumerate(present)], (-1, population_hvp)]:
            v = self.eigenvectors.get(key)
            if v is None or any(a.shape != p.shape for a, p in zip(v, params)):
                generator = torch.Generator().manual_seed(1000 + key)
                v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
                v = [t / norm(v) for t in v]
            eigenvalue, v = power_iteration(hvp, v, self.params.hessian_iterations)
            self.eigenvectors[key] = v
            values.append(eigenvalue)
            chunk_ids = [present.index(key)] if key >= 0 else range(len(chunks))
            chunk_weights = [1.0] if key >= 0 else weights
            second = [[(a - 2 * g + b) / eps ** 2 for a, g, b in zip(self._gradient(params, chunks[i], v, eps),
                                                                       grads[i],
                                                                       self._gradient(params, chunks[i], v, -eps))]
                      for i in chunk_ids]
            estimates.append(combine(second, chunk_weights))
        return torch.tensor(values, device=self.device), estimates


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision logits back to float32; float64 models stay float64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _fd_hvp(shifted_grad, grad, eps: float) -> list[torch.Tensor]:
    return [(a - b) / eps for a, b in zip(shifted_grad, grad)]


def _surrogate(values: torch.Tensor, gradients: list[list[torch.Tensor]], params) -> torch.Tensor:
    """Values that carry the given gradient estimates: value + <theta - theta.detach(), gradient>."""
    return torch.stack([value + sum(((p - p.detach()) * g).sum() for p, g in zip(params, grad))
                        for value, grad in zip(values.detach(), gradients)])


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
            self.check_finite(rollout.loss)
            if self.log:
                self.log(self.snapshot(rollout.cmp_state), self.step_index)
        return rollout.loss.detach(), rollout.cmp_state.misc["logits"]

    def check_finite(self, loss: torch.Tensor | None = None) -> None:
        if loss is not None and not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {float(loss)} by step {self.step_index} of the constrained training; "
                f"lower the learning rate, or mitigation.dual_lr (now {self.params.dual_lr})")
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

"""Tran et al.'s mitigation (docs/methods.md, first section): constrained ERM solved by Lagrangian duality.

relaxed (Eq. 8):   min J(theta; D)  s.t.  J(theta; D_a) - J(theta; D) = 0                      for every group a
full (feasible):   additionally  (G_a - G) / G_0 and (B_a - B) / B_0 within +-full_tolerance (G_0, B_0: first step)
full_literal (Eq. 7 as written): additionally ||g_a|| - ||g|| = 0 and lambda(H_a) - lambda(H) = 0

`full` is the paper's stated intent made feasible. Tran et al. explain the disparity by two
per-group quantities, the gradient norm and the Hessian (whose top eigenvalue grows with how close
the group's samples are to the decision boundary). `full` equalises per-sample versions of both:
G_a is the group's mean per-sample gradient norm and B_a its mean closeness to the boundary
1 - (p_top - p_second), each against the population mean G = sum_a (n_a / n) G_a (so the size-
weighted mean of the violations is 0: feasible by linearity, as the loss constraint), divided by the
population value at the first step (a fixed scale, so that one tolerance fits both; the current value
goes to 0 as the model fits and made the gradients blow up). The per-sample gradient is taken with respect
to the classifier layer (torch.func: vmap of grad over the samples), which is exactly
||p - e_y|| * ||(h, 1)|| -- the ||f(x) - y|| factor of Tran et al.'s Theorem 2 times the feature
norm; the whole network's per-sample gradients would cost batch x parameters memory. No double
backward through the network, so a step costs about a plain step plus a small vmap.

`full_literal` (Eq. 7 read literally) is infeasible wherever the groups' gradients disagree. The
population gradient is g = sum_a w_a g_a (w_a = n_a / n), so by the triangle inequality
||g|| <= sum_a w_a ||g_a||: the size-weighted mean of the violations ||g_a|| - ||g|| is never
negative, and all of them can be 0 only where every g_a is the same vector. The top eigenvalue is
convex in the matrix, so lambda(H) <= sum_a w_a lambda(H_a) likewise. At initialisation every digit
class was 1.45-1.71 above; the multipliers grow without end and the primal step seeks flat regions
(a model that predicts one class). It is kept, with `reference: group_mean` as its feasible form,
for the record:
- per-group gradients g_a from the batch split by group, kept differentiable (create_graph), each on
  two disjoint halves so that ||g_a|| = sqrt(<g_a^A, g_a^B>) is not biased upward by the sampling
  noise of small groups; the population gradient is their size-weighted sum; the gradient of
  ||g_a|| - ||g|| a double backward;
- models with BatchNorm are refused (a group's gradient would depend on the other groups' samples,
  and PyTorch has no third-order derivative for it);
- lambda(H_a) is the Rayleigh quotient v_a^T H_a v_a at a warm-started power-iteration vector (the
  largest algebraic eigenvalue); by Danskin's theorem its gradient is v^T (dH_a) v, a third-order
  backward, refreshed every `hessian_every` steps (`grad_norm_every` likewise).

Every constraint family has one Lagrange multiplier per group (cooper's IndexedMultiplier, so a
mini-batch that misses a group leaves that group's multiplier untouched), updated by dual ascent
before each primal step (cooper's AlternatingDualPrimalOptimizer). A positive `tolerance` turns
the loss equality into |violation| <= tolerance.
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
from fairprune.fairness.surrogate import group_counts, group_means
from fairprune.fairness.vectors import combine, norm, top_eigenpair
from fairprune.models import output_layer

CONSTRAINTS = {"relaxed": ("loss",), "full": ("loss", "sample_grad_norm", "boundary"),
               "full_literal": ("loss", "grad_norm", "hessian")}


class GroupFairnessProblem(cooper.ConstrainedMinimizationProblem):
    """Equal group loss (and, for `full`, equal gradient norm and Hessian top eigenvalue) per group."""

    def __init__(self, model: nn.Module, num_groups: int, params: MitigationParams, device: torch.device):
        super().__init__()
        self.model, self.num_groups, self.params, self.device = model, num_groups, params, device
        self.kinds = CONSTRAINTS[params.variant]
        if "hessian" in self.kinds and _has_batchnorm(model):
            raise ValueError("the full mitigation needs a model without BatchNorm (third-order derivatives); "
                             "use the relaxed variant with this model")
        for name in self.kinds:
            inequality = (params.tolerance if name == "loss" else self._tolerance(name)) > 0
            kind = cooper.ConstraintType.INEQUALITY if inequality else cooper.ConstraintType.EQUALITY
            multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_groups, device=device)
            setattr(self, name, cooper.Constraint(constraint_type=kind, multiplier=multiplier))
        self.eigenvectors: dict[int, list[torch.Tensor]] = {}
        self.scales: dict[str, float] = {}  # full: the population values the gaps are relative to
        self.step_count = 0

    def extra_state(self) -> dict:
        """What a checkpoint needs beyond the multipliers: the warm-started eigenvectors."""
        return {"eigenvectors": {k: [t.cpu() for t in v] for k, v in self.eigenvectors.items()},
                "step_count": self.step_count, "scales": dict(self.scales)}

    def load_extra_state(self, state: dict) -> None:
        self.eigenvectors = {k: [t.to(self.device) for t in v] for k, v in state["eigenvectors"].items()}
        self.step_count, self.scales = state["step_count"], dict(state.get("scales", {}))

    def _tolerance(self, name: str) -> float:
        return self.params.full_tolerance if name in ("sample_grad_norm", "boundary") else self.params.tolerance

    def _violation(self, values: torch.Tensor, present: torch.Tensor, name: str = "loss") -> cooper.ConstraintState:
        tolerance = self._tolerance(name)
        if tolerance > 0:
            values = values.abs() - tolerance
        return cooper.ConstraintState(violation=values, constraint_features=present)

    def _due(self, every: int) -> bool:
        return self.step_count % every == 0

    def compute_cmp_state(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> cooper.CMPState:
        counts = group_counts(groups, self.num_groups, torch.long)
        present = torch.nonzero(counts).flatten()
        features = {}
        handle = None
        if "sample_grad_norm" in self.kinds:
            handle = output_layer(self.model).register_forward_hook(lambda m, i, o: features.update(h=i[0]))
        with autocast(self.device):
            logits = self.model(x)
        if handle is not None:
            handle.remove()
        per_sample = F.cross_entropy(_full_precision(logits), y, reduction="none")
        loss = per_sample.mean()
        group_loss, _ = group_means(per_sample, groups, self.num_groups)
        observed = {self.loss: self._violation(group_loss[present] - loss, present)}
        misc = {"present": present, "logits": logits.detach(), "group_loss": group_loss.detach()}
        if "sample_grad_norm" in self.kinds:
            norms = _classifier_gradient_norms(output_layer(self.model), features["h"], y)
            closeness = _boundary_closeness(_full_precision(logits))
            for name, values in (("sample_grad_norm", norms), ("boundary", closeness)):
                means, _ = group_means(values, groups, self.num_groups)
                population = values.mean()
                # a fixed scale, the population value at the first step: dividing by the current one blew
                # the gradients up as training drove both to 0 (the digits collapsed in 2 of 3 seeds)
                scale = self.scales.setdefault(name, float(population.detach().clamp(min=1e-8)))
                relative = (means[present] - population) / scale
                observed[getattr(self, name)] = self._violation(relative, present, name)
                misc[name] = means.detach().cpu()
        if "grad_norm" in self.kinds:
            observed.update(self._second_order_constraints(x, y, groups, counts, present, misc))
        self.step_count += 1
        return cooper.CMPState(loss=loss, observed_constraints=observed, misc=misc)

    def _second_order_constraints(self, x, y, groups, counts, present, misc) -> dict:
        norms_due, hessian_due = self._due(self.params.grad_norm_every), self._due(self.params.hessian_every)
        if not (norms_due or hessian_due):
            return {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        present = present[counts[present] >= 2]  # a gradient norm needs two halves (see _halves)
        halves = [self._halves(params, x, y, groups == g) for g in present.tolist()]
        grads = [combine([a, b], [n_a / (n_a + n_b), n_b / (n_a + n_b)]) for a, b, n_a, n_b in halves]
        weights = counts[present].double() / counts[present].sum()
        population = combine(grads, weights.tolist()) if self.params.reference == "population" else None
        observed = {}
        if norms_due:
            norms = torch.stack([_unbiased_length(a, b) for a, b, *_ in halves])
            if population is not None:
                reference = _unbiased_length(combine([h[0] for h in halves], weights.tolist()),
                                             combine([h[1] for h in halves], weights.tolist()))
            else:
                reference = (weights.to(norms.dtype) * norms).sum()
            observed[self.grad_norm] = self._violation(norms - reference, present, "grad_norm")
            misc["grad_norm"] = norms.detach().cpu()
        if hessian_due:
            if population is not None:
                eig = self._eigenvalues(params, [*grads, population], [*present.tolist(), -1])
                groups_eig, reference = eig[:-1], eig[-1]
            else:
                eig = groups_eig = self._eigenvalues(params, grads, present.tolist())
                reference = (weights.to(eig.dtype) * eig).sum()
            observed[self.hessian] = self._violation(groups_eig - reference, present, "hessian")
            misc["hessian_top"] = eig.detach().cpu()
        return observed

    def _halves(self, params, x, y, rows: torch.Tensor):
        """The group's mean-loss gradients on two disjoint halves of its batch samples, and their sizes.
        ||g_A|| of one slice is biased upward by the sampling noise (more so for small groups: class 8
        of the digits read 0.54 from 64-sample batches, 0.31 on the whole training split); <g_A, g_B>
        of independent halves is an unbiased estimate of ||E g||^2."""
        idx = torch.nonzero(rows).flatten()
        first, second = idx[0::2], idx[1::2]
        return (self._group_gradient(params, x[first], y[first]), self._group_gradient(params, x[second], y[second]),
                len(first), len(second))

    def _group_gradient(self, params, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        with autocast(self.device):
            logits = self.model(x)
        loss = F.cross_entropy(_full_precision(logits), y)
        return list(torch.autograd.grad(loss, params, create_graph=True))

    def _eigenvalues(self, params, grads: list[list[torch.Tensor]], keys: list[int]) -> torch.Tensor:
        """Differentiable Rayleigh quotients v^T H v, one per gradient (group keys, -1 the population),
        at vectors refined by warm-started power iteration."""
        quotients = []
        for key, grad in zip(keys, grads):
            v = self.eigenvectors.get(key)
            if v is None or any(a.shape != p.shape for a, p in zip(v, params)):
                generator = torch.Generator().manual_seed(1000 + key)
                v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
                v = [t / norm(v) for t in v]

            def hvp(u, grad=grad):
                return [h.detach() for h in torch.autograd.grad(_inner(grad, u), params, retain_graph=True)]

            _, v = top_eigenpair(hvp, v, self.params.hessian_iterations)
            self.eigenvectors[key] = v
            hv = torch.autograd.grad(_inner(grad, v), params, create_graph=True)
            quotients.append(_inner(v, hv))
        return torch.stack(quotients)


def _classifier_gradient_norms(layer: nn.Linear, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's ||d loss_i / d(W, b)|| of the classifier layer, by torch.func (vmap of grad),
    differentiable with respect to the layer and the features (so to every earlier parameter)."""
    from torch.func import grad, vmap

    weight = getattr(layer, "weight")
    bias = layer.bias if layer.bias is not None else torch.zeros(weight.shape[0], device=weight.device)

    def sample_loss(w, b, h, target):
        return F.cross_entropy((h.float() @ w.float().T + b.float())[None], target[None])

    grads_w, grads_b = vmap(grad(sample_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(weight, bias, features, y)
    return torch.sqrt(grads_w.square().flatten(1).sum(1) + grads_b.square().sum(1) + 1e-12)


def _boundary_closeness(logits: torch.Tensor) -> torch.Tensor:
    """1 - (p_top - p_second) per sample: 1 on the decision boundary, 0 far from it."""
    top2 = logits.softmax(1).topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision logits back to float32; float64 models stay float64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _clip(parameters: list[torch.Tensor], max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _inner(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _unbiased_length(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """sqrt(<a, b>) of two independent estimates of one gradient: unbiased under the root (clamped at 0)."""
    return torch.sqrt(_inner(a, b).clamp(min=0) + 1e-12)


class ConstrainedStep:
    """One training step of a constrained problem: dual ascent, then the primal step.

    The problem is Tran et al.'s (GroupFairnessProblem) unless another is given (CEAG's); `params`
    needs dual_lr, dual_optimizer, max_grad_norm and log_every, and `where` names their section in
    messages."""

    def __init__(self, model: nn.Module, primal: torch.optim.Optimizer, num_groups: int,
                 params: MitigationParams, device: torch.device, log: Callable[[dict, int], None] | None = None,
                 *, problem: cooper.ConstrainedMinimizationProblem | None = None, where: str = "mitigation",
                 group_names: list[str] | None = None):
        self.problem = problem if problem is not None else GroupFairnessProblem(model, num_groups, params, device)
        self.where, self.group_names = where, group_names or [str(g) for g in range(num_groups)]
        dual_params = list(self.problem.dual_parameters())
        if params.dual_optimizer == "adam":
            dual = torch.optim.SparseAdam(dual_params, lr=params.dual_lr, maximize=True)
        else:
            dual = torch.optim.SGD(dual_params, lr=params.dual_lr, maximize=True)
        if params.max_grad_norm is not None:
            clipped = [p for group in primal.param_groups for p in group["params"]]
            primal.register_step_pre_hook(lambda *_: _clip(clipped, params.max_grad_norm))
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
                f"lower the learning rate, or {self.where}.dual_lr (now {self.params.dual_lr})")
        for name, values in self.multipliers().items():
            if not torch.isfinite(values).all():
                raise TrainingDiverged(
                    f"the Lagrange multipliers of the '{name}' constraints diverged ({values.tolist()}) by step "
                    f"{self.step_index}; lower {self.where}.dual_lr (now {self.params.dual_lr}) or raise "
                    f"{self.where}.tolerance")

    def multipliers(self) -> dict[str, torch.Tensor]:
        return {name: m.weight.detach().flatten().cpu() for name, m in self.problem.named_multipliers()}

    def snapshot(self, state: cooper.CMPState) -> dict[str, float]:
        """Multipliers, violations and per-group losses of one step, flat for MLflow."""
        record = {"mitigation/loss": float(state.loss.detach())}
        if hasattr(self.problem, "log_record"):
            return {**record, **self.problem.log_record(state, self.group_names)}
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
                "extra": self.problem.extra_state(), "step_index": self.step_index}

    def load_state_dict(self, state: dict) -> None:
        self.problem.load_state_dict(state["problem"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.problem.load_extra_state(state["extra"])
        self.step_index = state["step_index"]

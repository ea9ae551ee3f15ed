"""Differentiable accuracy-parity surrogates (Wu et al. 2019, BiFP Eqs. 6-8; docs/bifp.md).

The margin of a sample is z = f_y(x) - max_{c != y} f_c(x) (for two classes, y * f(x) with labels
in {-1, 1}); it is correct iff z > 0. Replacing the indicators 1(z > 0) and 1(z < 0) by a convex
upper bound u (logistic or hinge; BiFP's linear 1 + t is a convex approximation but no bound below
t = -1) gives, for each group a against all other samples,

    F_a = mean_{S=a} u(z) + mean_{S!=a} u(-z) - 1   >=   acc_a - acc_{not a}.

and the mirrored F'_a = mean_{S!=a} u(z) + mean_{S=a} u(-z) - 1 >= acc_{not a} - acc_a. With two
groups F_0 is the paper's F and F_1 = F'_0. Both bounds cannot be small at once: for the logistic
and hinge u, F_a + F'_a >= 2 - 1 - 1 + 2 = 2 whatever the model, with equality only when every
margin is 0, so penalising max(F, F') drives all margins to the decision boundary (measured on
the digits: accuracy 0.96 -> 0.59). `parity_penalty` therefore penalises the half-difference
(F_a - F'_a) / 2 = (D_a - D_{not a}) / 2 with D = mean(u(z) - u(-z)), which is 0 at parity.
For the logistic u, u(z) - u(-z) = z / ln 2 and for the hinge z + clip(z, -1, 1): both make D a
mean margin, unbounded, so the penalty is dominated by the most confident samples and can be
lowered by shrinking the better group's margins (levelling down) rather than fixing the worse
group's errors. The `sigmoid` u (not convex, not a bound: the smooth indicator sigmoid(t)) gives
u(z) - u(-z) = tanh(z / 2), so D is a soft 2 acc - 1 in [-1, 1] and the penalty a soft accuracy
gap; its `surrogate_errors` are soft error rates.
For more than two groups each group is compared with the rest and the largest disparity in either
direction, max_a |D_a - D_{not a}| / 2, is penalised: without the absolute value the maximum picks the
group furthest above the rest and a lagging group gets no more push than any other.

`surrogate_errors` gives each group's mean u(-z), an upper bound of its error rate; BiFP's
Lagrangian variant constrains each group's term against the mean of the groups' terms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ODD_PARTS = {  # u(t) - u(-t) of each, in closed form (the module docstring): what the penalty averages
    "logistic": lambda t: t / math.log(2.0),
    "hinge": lambda t: t + t.clamp(-1.0, 1.0),
    "linear": lambda t: 2.0 * t,
    "sigmoid": lambda t: torch.tanh(t / 2),
}
SURROGATES = {
    "logistic": lambda t: F.softplus(t) / math.log(2.0),  # log2(1 + e^t)
    "hinge": lambda t: torch.relu(1.0 + t),
    "linear": lambda t: 1.0 + t,
    "sigmoid": torch.sigmoid,
}


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """f_y(x) minus the largest other logit, per sample."""
    logits = logits.float()
    true = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return true - others.max(1).values


def group_counts(groups: torch.Tensor, num_groups: int, dtype: torch.dtype) -> torch.Tensor:
    # not torch.bincount: on a GPU it reads the largest label back to the host to size its output
    return torch.zeros(num_groups, dtype=torch.long, device=groups.device).index_add(
        0, groups, torch.ones(groups.shape, dtype=torch.long, device=groups.device)).to(dtype)


def group_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group means of a per-sample tensor (differentiable; 0 for an empty group) and the per-group counts."""
    counts = group_counts(groups, num_groups, values.dtype)
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    return sums / counts.clamp(min=1), counts


def parity_surrogates(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, num_groups: int,
                      surrogate: str = "logistic") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F_a and F'_a for every group, a mask of the groups present in the batch with someone outside them)."""
    u = SURROGATES[surrogate]
    z = margins(logits, targets)
    correct_sums, wrong_sums = (torch.zeros(num_groups, dtype=z.dtype, device=z.device).index_add(0, groups, v)
                                for v in (u(z), u(-z)))
    counts = group_counts(groups, num_groups, z.dtype)
    outside = counts.sum() - counts
    inside_mean = lambda sums: sums / counts.clamp(min=1)  # noqa: E731
    outside_mean = lambda sums: (sums.sum() - sums) / outside.clamp(min=1)  # noqa: E731
    present = (counts > 0) & (outside > 0)
    forward = inside_mean(correct_sums) + outside_mean(wrong_sums) - 1.0
    mirrored = outside_mean(correct_sums) + inside_mean(wrong_sums) - 1.0
    return forward, mirrored, present


def parity_penalty(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, num_groups: int,
                   surrogate: str = "logistic") -> torch.Tensor:
    """max_a |F_a - F'_a| / 2 = |D_a - D_{not a}| / 2 over the groups present (0 when the batch holds a
    single group). With two groups the two terms are equal; with more, the group furthest from the
    rest in either direction is the one pushed (towards the rest).

    BiFP adds this at every step, and on a GPU a small model's step is bound by kernel launches, not
    arithmetic: through F and F' it took about 80 kernels forward and backward, cross-entropy 6. The
    maximum is linear in d = u(z) - u(-z) with weights that are constant where it is differentiable,
    so sum_i w_i d_i, with w found without autograd, has its value and its gradient (at an exact tie
    the first group's) and leaves autograd only d. No host read: masks, not indexing or bincount."""
    d = ODD_PARTS[surrogate](margins(logits, targets))
    with torch.no_grad():
        weights = _penalty_weights(d, groups, num_groups)
    return (weights * d).sum()


def _penalty_weights(d: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """w_i = s / (2 n_a) for the samples of the maximising group a, -s / (2 (N - n_a)) for the rest, with
    s the sign of its D_a - D_{not a}; all 0 when no group has samples both in it and outside it."""
    inside_mean, counts = group_means(d, groups, num_groups)
    outside_counts = counts.sum() - counts
    outside_mean = (d.sum() - inside_mean * counts) / outside_counts.clamp(min=1)
    present = (counts > 0) & (outside_counts > 0)
    difference = inside_mean - outside_mean
    top = difference.abs().masked_fill(~present, float("-inf")).argmax().view(1)
    # gather, not [top]: indexing by a tensor reads it back to the host
    sign = torch.where(difference.gather(0, top) < 0, -1.0, 1.0).to(d.dtype)
    inside_weight, outside_weight = (0.5 * sign / n.gather(0, top).clamp(min=1) for n in (counts, outside_counts))
    return torch.where(groups == top, inside_weight, -outside_weight) * present.any()


def surrogate_errors(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, num_groups: int,
                     surrogate: str = "logistic") -> tuple[torch.Tensor, torch.Tensor]:
    """(per-group mean of u(-z), an upper bound of each group's error rate; the group counts)."""
    return group_means(SURROGATES[surrogate](-margins(logits, targets)), groups, num_groups)


def surrogate_excess(margin: torch.Tensor, groups: torch.Tensor, num_groups: int, surrogate: str = "logistic",
                     ) -> tuple[torch.Tensor, float]:
    """From saved margins: (each group's surrogate error, the largest excess of a present group over
    the present groups' mean), the quantity bifp_lagrangian holds below its tolerance."""
    errors, counts = group_means(SURROGATES[surrogate](-margin.float()), groups, num_groups)
    present = errors[counts > 0]
    return errors, float((present - present.mean()).max())

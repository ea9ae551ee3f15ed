"""CEAG, constrained excess accuracy gap (Hashemizadeh et al., "Balancing Act", ICLR 2024), and its
equal-loss-with-replay-buffer comparison arm; docs/methods.md has the notation.

For every group a, with the dense model's accuracies measured once on the training split:

    psi_a = (acc_a^dense - acc_a) - (acc^dense - acc) <= tolerance

Accuracy has no gradient, so the two sides of each constraint are measured differently (cooper's
proxy constraints: `violation` for the primal step, `strict_violation` for the dual step):
- primal: the loss-gap proxy (J_a - J_a^dense) - (J - J^dense) on the training batch, differentiable;
- dual: the true psi_a estimated from a replay buffer holding each group's last `buffer` per-sample
  correctness values (samples, as in the authors' GroupCyclicBuffer; not batches), used only once
  the group's buffer is full. A group with a partial buffer has strict violation 0, so its
  multiplier does not move (masks, not indexing: no host read on a GPU).
The buffer's overall accuracy weighs each group by its share of the training split
(acc = sum_a p_a acc_a); the authors' code averages the full buffers with equal weights, which is
the overall accuracy only when the groups are equally large (a departure, kept on purpose).

`equal_loss` is the authors' second comparison arm: |J_a - J| <= tolerance with the primal on the
batch and the dual on the buffered per-sample losses (Tran et al.'s relaxed constraint plus the
replay buffer; without the buffer it is `<method>+fair_aft`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cooper
import torch
import torch.nn.functional as F
from torch import nn

from fairprune.device import autocast
from fairprune.fairness.surrogate import group_counts, group_means


@dataclass
class DenseReference:
    """The dense model's per-group and overall accuracy and loss on the training split."""

    group_accuracy: torch.Tensor  # (G,)
    accuracy: float
    group_loss: torch.Tensor  # (G,)
    loss: float
    group_share: torch.Tensor  # (G,) each group's fraction of the training split

    @classmethod
    def from_stats(cls, stats, device: torch.device) -> "DenseReference":
        share = torch.as_tensor(stats.n, dtype=torch.float32) / max(int(stats.n.sum()), 1)
        as_tensor = lambda v: torch.nan_to_num(torch.as_tensor(v, dtype=torch.float32)).to(device)  # noqa: E731
        return cls(as_tensor(stats.accuracy), float(stats.overall_accuracy), as_tensor(stats.loss),
                   float(stats.overall_loss), share.to(device))


class GroupReplayBuffer:
    """Each group's last `size` per-sample values in a (G, size) ring, written without host reads.

    Of a batch holding more than `size` samples of a group only its last `size` are kept, as a
    deque(maxlen=size) extended with the batch would keep."""

    def __init__(self, num_groups: int, size: int, device: torch.device):
        self.values = torch.zeros(num_groups, size, device=device)
        self.position = torch.zeros(num_groups, dtype=torch.long, device=device)  # next slot to write
        self.filled = torch.zeros(num_groups, dtype=torch.long, device=device)
        self.size, self.num_groups = size, num_groups

    def update(self, groups: torch.Tensor, values: torch.Tensor) -> None:
        order = torch.sort(groups, stable=True).indices
        sorted_groups = groups[order]
        counts = group_counts(groups, self.num_groups, torch.long)
        first = torch.cumsum(counts, 0) - counts  # where each group starts in the sorted batch
        rank = torch.arange(len(groups), device=groups.device) - first[sorted_groups]
        skipped = (counts - self.size).clamp(min=0)  # all but the last `size` of a group
        keep = rank >= skipped[sorted_groups]
        slot = (self.position[sorted_groups] + rank - skipped[sorted_groups]) % self.size
        # index_put_ with accumulate=False and masked-out rows sent to a scratch column
        scratch = torch.cat([self.values, torch.zeros(self.num_groups, 1, device=self.values.device)], 1)
        column = torch.where(keep, slot, torch.full_like(slot, self.size))
        scratch.index_put_((sorted_groups, column), values[order].to(scratch.dtype))
        self.values = scratch[:, :self.size].contiguous()
        written = counts.clamp(max=self.size)
        self.position = (self.position + written) % self.size
        self.filled = (self.filled + written).clamp(max=self.size)

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(each group's buffer mean, which groups' buffers are full)."""
        return self.values.mean(1), self.filled == self.size

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "position": self.position.cpu(), "filled": self.filled.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.values.device
        self.values, self.position, self.filled = (state[k].to(device) for k in ("values", "position", "filled"))


def excess_accuracy_drop(group_accuracy: torch.Tensor, accuracy: torch.Tensor, reference: DenseReference) -> torch.Tensor:
    """psi_a = (acc_a^dense - acc_a) - (acc^dense - acc), per group."""
    return (reference.group_accuracy - group_accuracy) - (reference.accuracy - accuracy)


class ExcessGapProblem(cooper.ConstrainedMinimizationProblem):
    """One inequality constraint per group, multipliers updated on the buffered true violations."""

    def __init__(self, model: nn.Module, num_groups: int, reference: DenseReference, *, tolerance: float,
                 buffer: int, constraint: str, device: torch.device):
        super().__init__()
        if constraint not in ("accuracy_gap", "equal_loss"):
            raise ValueError(f"unknown constraint {constraint!r}")
        self.model, self.num_groups, self.reference, self.device = model, num_groups, reference, device
        self.tolerance, self.kind = tolerance, constraint
        self.buffer = GroupReplayBuffer(num_groups, buffer, device)
        self.all_groups = torch.arange(num_groups, device=device)
        multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_groups, device=device)
        self.excess_gap = cooper.Constraint(constraint_type=cooper.ConstraintType.INEQUALITY, multiplier=multiplier)

    def compute_cmp_state(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> cooper.CMPState:
        with autocast(self.device):
            logits = self.model(x)
        logits = logits.float()
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = per_sample.mean()
        group_loss, counts = group_means(per_sample, groups, self.num_groups)
        present = counts > 0
        ref = self.reference
        accuracy_gap = self.kind == "accuracy_gap"
        # the buffer holds per-sample correctness (CEAG) or per-sample losses (the equal-loss arm)
        self.buffer.update(groups, (logits.detach().argmax(1) == y).float() if accuracy_gap else per_sample.detach())
        buffered, full = self.buffer.means()
        overall = (ref.group_share * buffered * full).sum() / (ref.group_share * full).sum().clamp(min=1e-12)
        if accuracy_gap:
            proxy = (group_loss - ref.group_loss) - (loss - ref.loss)
            strict = excess_accuracy_drop(buffered, overall, ref) - self.tolerance
        else:  # |.| in both, as the authors' abs_equality_constraint
            proxy = (group_loss - loss).abs()
            strict = (buffered - overall).abs() - self.tolerance
        zero = torch.zeros_like(proxy)
        state = cooper.ConstraintState(
            violation=torch.where(present, proxy, zero), constraint_features=self.all_groups,
            strict_violation=torch.where(full, strict, zero).detach(), strict_constraint_features=self.all_groups)
        misc = {"logits": logits.detach(), "group_loss": group_loss.detach(), "present": present,
                "buffered": buffered.detach(), "full": full}
        return cooper.CMPState(loss=loss, observed_constraints={self.excess_gap: state}, misc=misc)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])

    def log_record(self, state: cooper.CMPState, names: list[str]) -> dict[str, float]:
        """Multipliers, true (buffered) violations and buffered group metrics, per group name."""
        cstate = state.observed_constraints[self.excess_gap]
        metric = "buffer_accuracy" if self.kind == "accuracy_gap" else "buffer_loss"
        record = {}
        for g, name in enumerate(names):
            record[f"multiplier/{self.kind}/{name}"] = float(self.excess_gap.multiplier.weight.flatten()[g])
            if bool(state.misc["full"][g]):
                record[f"violation/{self.kind}/{name}"] = float(cstate.strict_violation[g]) + self.tolerance
                record[f"{metric}/{name}"] = float(state.misc["buffered"][g])
            if bool(state.misc["present"][g]):
                record[f"proxy_violation/{self.kind}/{name}"] = float(cstate.violation[g])
        return record

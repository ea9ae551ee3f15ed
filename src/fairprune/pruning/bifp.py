"""BiFP: the pruning mask (upper level) and the weights (lower level) learned together, both under a
differentiable accuracy-parity term (docs/bifp.md; settings in `prune.bifp`).

`prune` installs the first hard mask (the top scores, initialised from |theta| so it is magnitude
pruning's, or random) through torch.nn.utils.prune; the fine-tuning epochs then run `BifpStep`
instead of plain SGD. Every K + 1 batches form one outer iteration:
- K weight steps, mask fixed: task loss + lambda_w * F on theta (the fine-tuning optimiser);
- one score step, weights fixed: task loss + lambda_m * F, whose gradient with respect to the
  masked weights z = m * theta gives, from that one backward,
      grad_scores = df/dz * theta  -  ig_scale * dg/dz * (df/dz * m)
  with f = task + lambda_m F the upper-level and g = task + lambda_w F the lower-level loss
  (straight-through to the scores, then BiP's first-order implicit-gradient correction
  -(1/gamma) grad_z g * grad_theta f with grad_theta f = grad_z f * m), summed over the weights a
  score gates; then the hard mask is recomputed at exactly the target sparsity. When
  lambda_w = lambda_m the two gradients are one backward; otherwise two.
F is `parity_penalty` (half the difference of Wu et al.'s F and its mirror, see fairness.surrogate). `bifp_lagrangian`
instead constrains each group's surrogate error to at most the groups' mean + `tolerance`, with one
cooper multiplier per group, updated by dual ascent at every weight step and used by both levels.
A fitted training batch shows no violation, so with `dual_split: val` the violations the multipliers
ascend on are measured on held-out validation batches (Cotter et al. 2019), the primal terms still
on the training batch.

`bifp_uns` has a score per weight and one global top-k. `bifp_str` has a score per output channel of
each Torch-Pruning dependency group (the channels a residual addition couples share one score); a
channel's mask zeroes its filters, biases and BatchNorm affine parameters, so its activation is
exactly zero, and at the end the masked channels are removed through the same dependency graph as
FPGM: the exported, physically smaller model computes what the masked one did. A masked channel's
pre-activation is exactly 0, where ReLU passes no gradient, so its score could never rise again: in
the score step a channel that an activation module follows is instead gated after that activation
(`ActivationGates`: parameters unmasked, output times the 0/1 channel mask, the same forward), and
its score gradient is <df/da_c, a_c> of the unmasked channel's activation a_c.
"""
from __future__ import annotations

import contextlib
import copy

import cooper
import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.config import BifpParams
from fairprune.device import autocast
from fairprune.errors import TrainingCollapsed
from fairprune.fairness.surrogate import parity_penalty, surrogate_errors
from fairprune.pruning.base import (GlobalTopMasks, PruneContext, PruningMethod, make_permanent, prunable_weights,
                                    register)
from fairprune.models import output_layer
from fairprune.pruning.structured import L1Filter


class WeightScores:
    """A score per prunable weight; the mask keeps the `keep` highest scores across all layers."""

    def __init__(self, targets: list[tuple[nn.Module, str]], scores: list[torch.Tensor], keep: int):
        self.targets, self.scores, self.keep = targets, scores, keep
        self.top = GlobalTopMasks(keep)

    def masks(self, scores: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.top(scores)

    def score_grads(self, per_weight: list[torch.Tensor]) -> list[torch.Tensor]:
        return per_weight


class ChannelScores:
    """A score per output channel of each dependency group; each group keeps its `keeps[g]` best.

    `gated[i] = (group, dim-0 channel index per group channel)` says which channels of target i
    each group channel gates: the filters (dim 0) of its convolutions and linear layers, their
    biases, and its BatchNorm weights and biases."""

    def __init__(self, targets, gated, scores: list[torch.Tensor], keeps: list[int],
                 gates: "ActivationGates | None" = None):
        self.targets, self.gated, self.scores, self.keeps, self.gates = targets, gated, scores, keeps, gates

    def channel_masks(self, scores: list[torch.Tensor]) -> list[torch.Tensor]:
        channel_masks = []
        for score, keep in zip(scores, self.keeps):
            mask = torch.zeros_like(score)
            mask[torch.topk(score, keep).indices] = 1
            channel_masks.append(mask)
        return channel_masks

    def masks(self, scores: list[torch.Tensor]) -> list[torch.Tensor]:
        channel_masks = self.channel_masks(scores)
        masks = []
        for (module, name), (group, channels) in zip(self.targets, self.gated):
            param = getattr(module, f"{name}_orig", None)
            param = getattr(module, name) if param is None else param
            mask = torch.ones(param.shape[0], device=param.device, dtype=param.dtype)
            mask[channels] = channel_masks[group].to(param.device, param.dtype)
            masks.append(mask.view(-1, *[1] * (param.dim() - 1)).expand_as(param).clone())
        return masks

    def score_grads(self, per_weight: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = [torch.zeros_like(s) for s in self.scores]
        for g, (group, channels) in zip(per_weight, self.gated):
            grads[group] += g.flatten(1).sum(dim=1)[channels] if g.dim() > 1 else g[channels]
        return grads


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardtanh)
# Channel-wise and parameter-free, like an activation; a gate after max pooling rather than before it,
# where all-zero windows would route the gradient to an arbitrary (the first) element.
CHANNELWISE = ACTIVATIONS + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class ActivationGates:
    """Gates where a dependency group's channels leave the group, for the score step.

    The points are the outputs of the layers and activation modules, per call in forward order (a
    ResNet block calls its ReLU twice, for two groups), traced once through the autograd graph: a
    layer's point belongs to the layer's group, an activation's (or pooling's) to the group of the
    points it reads. A point is gated when a layer of another group (or the classifier) reads it:
    after the last activation (or pooling) of a conv-BN-ReLU chain, after MobileNetV2's depthwise stage but not its expansion
    (two gates in series, both 0, would block each other's gradient), after a linear bottleneck's
    BatchNorm. Inside `applied` the parameters of the gated groups are unmasked and each gated point
    is multiplied by a leaf holding its group's 0/1 channel mask: the forward is the masked model's,
    and the gradient with respect to the gate is <df/da_c, a_c> of the unmasked channel's output a_c,
    where the masked parameters' gradient would stop at ReLU's zero derivative."""

    LAYERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)

    def __init__(self, model: nn.Module, targets, gated, input_shape):
        producers = {}  # a target layer -> (its group, its dim-0 index of each group channel)
        for (layer, name), (group, channels) in zip(targets, gated):
            if name == "weight":
                producers[layer] = (group, channels)
        points, handles = [], []
        for module in model.modules():
            if isinstance(module, self.LAYERS + CHANNELWISE):
                handles.append(module.register_forward_hook(
                    lambda module, _, out: points.append((module, out.grad_fn))))
        try:
            was_training = model.training
            with torch.enable_grad():
                model.eval()(torch.rand(2, *input_shape, device=next(model.parameters()).device))
            model.train(was_training)
        finally:
            for handle in handles:
                handle.remove()
        index = {node: i for i, (_, node) in enumerate(points)}
        owner = []  # per point: (group, channels) or None
        readers = [set() for _ in points]
        for i, (module, node) in enumerate(points):
            behind = self._points_behind(node, index)
            for j in behind:
                readers[j].add(i)
            if isinstance(module, CHANNELWISE):
                owner.append(next((owner[j] for j in sorted(behind) if owner[j] is not None), None))
            else:
                owner.append(producers.get(module))
        group_of = [None if entry is None else entry[0] for entry in owner]
        self.calls: dict[nn.Module, list] = {}  # module -> per call in forward order: (group, channels) or None
        for i, (module, _) in enumerate(points):
            leaves = any(group_of[r] != group_of[i] for r in readers[i])
            self.calls.setdefault(module, []).append(owner[i] if owner[i] is not None and leaves else None)
        self.calls = {m: entries for m, entries in self.calls.items() if any(entries)}
        self.groups = {entry[0] for entries in self.calls.values() for entry in entries if entry is not None}
        self.targets = [i for i, (group, _) in enumerate(gated) if group in self.groups]

    @staticmethod
    def _points_behind(grad_fn, index: dict, depth: int = 8) -> set[int]:
        """The points whose outputs reach `grad_fn` without passing another point."""
        found, frontier = set(), [f for f, _ in (grad_fn.next_functions if grad_fn is not None else ()) if f]
        for _ in range(depth):
            found |= {index[node] for node in frontier if node in index}
            frontier = [f for node in frontier if node not in index for f, _ in node.next_functions if f]
        return found

    @contextlib.contextmanager
    def applied(self, mask_buffers: list[torch.Tensor], channel_masks: list[torch.Tensor]):
        """Yield one gate leaf per group (None for an ungated group) while the gates are in place."""
        gates = [mask.detach().clone().requires_grad_() if group in self.groups else None
                 for group, mask in enumerate(channel_masks)]
        saved = [mask_buffers[i].clone() for i in self.targets]
        for i in self.targets:
            mask_buffers[i].fill_(1)
        position = {}

        def gate(module, _, out):
            call = position.get(module, 0)
            position[module] = call + 1
            entry = self.calls[module][call % len(self.calls[module])]
            if entry is None:
                return out
            group, channels = entry
            scale = torch.ones(out.shape[1], device=out.device, dtype=gates[group].dtype)
            scale = scale.index_put((channels.to(out.device),), gates[group])
            return out * scale.view(1, -1, *[1] * (out.dim() - 2)).to(out.dtype)

        handles = [module.register_forward_hook(gate) for module in self.calls]
        try:
            yield gates
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for i, mask in zip(self.targets, saved):
                    mask_buffers[i].copy_(mask)


class BifpUnstructured(PruningMethod):
    """A score per weight, global top-k hard mask, straight-through to the scores."""

    name = "bifp_uns"
    reads = ("bifp",)
    owns_finetuning = True
    overrides: dict = {}  # ablations fix some settings
    lagrangian = False

    def settings(self, ctx: PruneContext) -> BifpParams:
        return BifpParams(**{**ctx.options.get("bifp", {}), **self.overrides})

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        self.bifp = self.settings(ctx)
        self.num_groups = ctx.data.num_groups
        self.heldout = HeldOutBatches(ctx.data.subset("val"), ctx.seed, ctx.device) \
            if self.lagrangian and self.bifp.dual_split == "val" else None
        self.layout = self.score_layout(model, sparsity, ctx)
        for (module, name), mask in zip(self.layout.targets, self.layout.masks(self.layout.scores)):
            torch_prune.custom_from_mask(module, name, mask)
        return model

    def score_layout(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> WeightScores:
        targets = prunable_weights(model, ctx.exclude_output_layer)
        weights = [getattr(m, n).detach() for m, n in targets]
        scores = [self.initial_scores(w.abs(), ctx.seed) for w in weights]
        total = sum(w.numel() for w in weights)
        return WeightScores(targets, scores, keep=total - torch_prune._compute_nparams_toprune(sparsity, total))

    def initial_scores(self, magnitude: torch.Tensor, seed: int) -> torch.Tensor:
        if self.bifp.score_init == "magnitude":
            return magnitude.clone()
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(magnitude.shape, generator=generator).to(magnitude.device) * magnitude.mean()

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> "BifpStep":
        self.step = BifpStep(model, optimizer, self.layout, self.num_groups, self.bifp, device, self.lagrangian,
                             self.heldout)
        return self.step

    def before_finetune_epoch(self, model: nn.Module, epoch: int, total_epochs: int) -> None:
        if getattr(self, "step", None) is not None:
            self.step.mask_fixed = epoch >= total_epochs - self.bifp.mask_freeze_epochs

    def check_epoch(self, predictions, epoch: int, start) -> None:
        """Stop when the fine-tuning made the model worse than it was right after pruning (`start`,
        validation split) AND a class it predicted then is no longer predicted at all: the fairness term
        has pushed that class's samples elsewhere (seen with the logistic surrogate on two face sets).
        A class pruning alone had silenced, or one a weak model drops while its accuracy still rises
        (a 90 %-sparse structured model in its first epoch), does not stop the run."""
        if not self.bifp.collapse_check:
            return
        before = np.bincount(start.y_pred, minlength=start.num_classes) > 0
        now = np.bincount(predictions.y_pred, minlength=predictions.num_classes) > 0
        vanished = np.nonzero(before & ~now)[0].tolist()
        accuracy, start_accuracy = (float(np.mean(p.y_true == p.y_pred)) for p in (predictions, start))
        if vanished and accuracy < start_accuracy:
            raise TrainingCollapsed(
                f"{self.name}: after fine-tuning epoch {epoch} the model predicts no validation sample as class(es) "
                f"{vanished}, which it predicted right after pruning, and its validation accuracy fell from "
                f"{start_accuracy:.3f} to {accuracy:.3f}: the fairness term collapsed the model "
                f"(surrogate '{self.bifp.surrogate}', lambda_w {self.bifp.lambda_w}, lambda_m {self.bifp.lambda_m}). "
                f"Lower the lambdas, use prune.bifp.surrogate: sigmoid if it is not, or set "
                f"prune.bifp.collapse_check: false to keep the collapsed model")


@register
class BifpStructured(BifpUnstructured):
    """A score per output channel (per dependency group), exported to a physically smaller model."""

    name = "bifp_str"
    structured = True
    OUT_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)

    def score_layout(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> ChannelScores:
        # The channels each group keeps: those of the L1-filter model at this sparsity (same count
        # per group, found by the same bisection), so the export has exactly its parameter count.
        self.export_twin = L1Filter().prune(copy.deepcopy(model), sparsity, ctx)
        kept = dict(self.export_twin.named_modules())
        names = {module: name for name, module in model.named_modules()}
        graph = self.dependency_graph(model, ctx.data.input_shape)
        self.roots, targets, gated, scores, keeps = [], [], [], [], []
        for index, group in enumerate(graph.get_all_groups(ignored_layers=[output_layer(model)],
                                                           root_module_types=[nn.Conv2d, nn.Linear])):
            root = group[0][0].target.module
            self.roots.append(names[root])
            keeps.append(kept[names[root]].weight.shape[0])
            magnitude, count = 0.0, 0
            for dep, idxs in group:
                layer = dep.layer
                if dep.pruning_fn.__name__ != "prune_out_channels" or not isinstance(layer, self.OUT_LAYERS):
                    continue
                for param_name in ("weight", "bias"):
                    param = getattr(layer, param_name, None)
                    if param is None or any(t == (layer, param_name) for t in targets):
                        continue
                    channels = torch.as_tensor([int(i) for i in idxs])
                    targets.append((layer, param_name))
                    gated.append((index, channels))
                    if not isinstance(layer, nn.modules.batchnorm._BatchNorm) and param_name == "weight":
                        magnitude = magnitude + param.detach()[channels].abs().flatten(1).sum(dim=1)
                        count += param[0].numel()
            scores.append(self.initial_scores(magnitude / count, ctx.seed + index))
        return ChannelScores(targets, gated, scores, keeps, ActivationGates(model, targets, gated, ctx.data.input_shape))

    @staticmethod
    def dependency_graph(model: nn.Module, input_shape) -> tp.DependencyGraph:
        example = torch.rand(1, *input_shape, device=next(model.parameters()).device)
        was_training = model.training
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)
        model.train(was_training)
        return graph

    def finish(self, model: nn.Module) -> nn.Module:
        """Fold the masks in, then remove every masked channel through the dependency graph."""
        masks = self.layout.masks([s.detach().cpu() for s in self.layout.scores])
        channel_masks = {}
        for (group, channels), mask in zip(self.layout.gated, masks):
            channel_masks.setdefault(group, mask.flatten(1)[channels, 0] if mask.dim() > 1 else mask[channels])
        make_permanent(model)
        modules = dict(model.named_modules())
        graph = self.dependency_graph(model, model.input_shape)
        for group, root_name in enumerate(self.roots):
            root = modules[root_name]
            removed = torch.nonzero(channel_masks[group].cpu() == 0).flatten().tolist()
            if removed:
                fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
                graph.get_pruning_group(root, fn, idxs=removed).prune()
        return model


class HeldOutBatches:
    """Endless seeded shuffled batches of a held-out split, as float inputs on the device."""

    def __init__(self, subset, seed: int, device: torch.device, batch_size: int = 256):
        if not len(subset[1]):
            raise ValueError("prune.bifp.dual_split is val but the validation split is empty; "
                             "raise data.val_fraction or set dual_split: train")
        # On the device once (a few MB of uint8), not a pageable float copy at every weight step.
        self.images, self.targets, self.groups = (t.to(device) for t in subset)
        self.generator, self.device, self.batch_size = torch.Generator().manual_seed(seed), device, batch_size
        self.order, self.position = torch.empty(0, dtype=torch.long), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.targets), generator=self.generator).to(self.device)
            self.position = 0
        idx = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.images[idx].float().div(255.0), self.targets[idx], self.groups[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].to(self.device), state["position"]


class BifpStep:
    """One batch of BiFP's alternation; a drop-in for training.PlainStep inside training.fit."""

    def __init__(self, model, optimizer, layout: WeightScores | ChannelScores, num_groups: int, bifp: BifpParams,
                 device: torch.device, lagrangian: bool, heldout: HeldOutBatches | None = None):
        self.model, self.optimizer, self.layout, self.heldout = model, optimizer, layout, heldout
        self.num_groups, self.bifp, self.device = num_groups, bifp, device
        self.scores = [s.to(device).requires_grad_() for s in layout.scores]
        layout.scores = self.scores
        self.score_optimizer = torch.optim.Adam(self.scores, lr=bifp.score_lr, fused=device.type == "cuda")
        self.calls = 0
        self.mask_fixed = False
        self.multiplier = None
        if lagrangian:
            self.multiplier = cooper.multipliers.IndexedMultiplier(num_constraints=num_groups, device=device)
            self.multiplier.set_constraint_type(cooper.ConstraintType.INEQUALITY)
            self.dual_optimizer = torch.optim.SGD(self.multiplier.parameters(), lr=bifp.dual_lr, maximize=True)
            self.all_groups = torch.arange(num_groups, device=device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if not self.mask_fixed and self.calls % (self.bifp.inner_steps + 1) == 0:
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
        violation = self._violations(logits, y, groups)
        lagrangian = task + (self.multiplier(self.all_groups).detach() * violation).sum()
        return lagrangian, task, violation.detach()

    def _violations(self, logits, y, groups) -> torch.Tensor:
        """Each present group's surrogate error minus the present groups' mean and the tolerance; 0 for
        a group absent from the batch, so its multiplier stays (masks, not indexing: no host read)."""
        errors, counts = surrogate_errors(logits, y, groups, self.num_groups, self.bifp.surrogate)
        present = counts > 0
        mean = (errors * present).sum() / present.sum()
        return torch.where(present, errors - mean - self.bifp.tolerance, torch.zeros_like(errors))

    def _weight_step(self, x, y, groups):
        with autocast(self.device):
            logits = self.model(x)
        loss, task, constraint = self._objective(logits, y, groups, self.bifp.lambda_w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if constraint is not None:
            violation = constraint if self.heldout is None else self._heldout_violation()
            self.dual_optimizer.zero_grad(set_to_none=True)
            self.multiplier.weight.grad = violation.to(self.multiplier.weight.dtype).view_as(self.multiplier.weight)
            self.dual_optimizer.step()
            self.multiplier.post_step_()
        return task.detach(), logits.detach()

    @torch.no_grad()
    def _heldout_violation(self) -> torch.Tensor:
        x, y, groups = self.heldout.next()
        was_training = self.model.training
        self.model.eval()  # BatchNorm: no running-statistics update from held-out data
        with autocast(self.device):
            logits = self.model(x)
        self.model.train(was_training)
        return self._violations(logits, y, groups)

    def _level_gradients(self, logits, y, groups, gates: list[torch.Tensor]):
        """d/dz of the upper-level loss f = l + lambda_m F and of the lower-level g = l + lambda_w F at
        z = m * theta, and df/d(gate) for each activation gate. One backward when the two levels
        coincide (lambda_w = lambda_m, the Lagrangian variant, or no implicit-gradient term); otherwise
        the gradients of l and F, combined."""
        masked = [getattr(m, n) for m, n in self.layout.targets]  # the pruning hooks' m * theta of this forward
        count = len(masked)
        lambda_m, lambda_w = self.bifp.lambda_m, self.bifp.lambda_w
        if self.multiplier is not None or lambda_m == lambda_w or self.bifp.ig_scale == 0:
            loss, task, _ = self._objective(logits, y, groups, lambda_m)
            upper = [g.float() for g in torch.autograd.grad(loss, masked + gates)]
            return upper[:count], upper[:count], upper[count:], task
        task = F.cross_entropy(logits.float(), y)
        penalty = parity_penalty(logits, y, groups, self.num_groups, self.bifp.surrogate)
        task_grads = [g.float() for g in torch.autograd.grad(task, masked + gates, retain_graph=True)]
        penalty_grads = [g.float() for g in torch.autograd.grad(penalty, masked + gates)]
        upper = torch._foreach_add(task_grads, penalty_grads, alpha=lambda_m)
        lower = torch._foreach_add(task_grads[:count], penalty_grads[:count], alpha=lambda_w)
        return upper[:count], lower, upper[count:], task

    def _score_step(self, x, y, groups):
        gates = getattr(self.layout, "gates", None)
        with contextlib.ExitStack() as stack:
            gate_leaves = [] if gates is None else stack.enter_context(gates.applied(
                self._pruning_tensors("mask"), self.layout.channel_masks([s.detach() for s in self.scores])))
            present = [g for g in gate_leaves if g is not None]
            with autocast(self.device):
                logits = self.model(x)
            upper, lower, gate_grads, task = self._level_gradients(logits, y, groups, present)
        with torch.no_grad():
            thetas, masks = self._pruning_tensors("orig"), self._pruning_tensors("mask")
            if gates is not None:  # a gated channel's straight-through term is its gate's gradient
                thetas = [torch.zeros_like(t) if i in gates.targets else t for i, t in enumerate(thetas)]
            # grad_z f * theta - ig_scale * grad_z g * (grad_z f * mask), with grad_theta f = grad_z f * mask:
            # two multi-tensor kernels, not two per layer (launch-bound GPUs)
            per_weight = torch._foreach_addcmul(thetas, lower, masks, value=-self.bifp.ig_scale)
            torch._foreach_mul_(per_weight, upper)
            score_grads = self.layout.score_grads(per_weight)
            gate_grads = iter(gate_grads)
            for score, grad, leaf in zip(self.scores, score_grads, gate_leaves or [None] * len(self.scores)):
                score.grad = (grad if leaf is None else grad + next(gate_grads)).to(score.dtype)
            self.score_optimizer.step()
            self.refresh_masks()
        return task.detach(), logits.detach()

    def _pruning_tensors(self, kind: str) -> list[torch.Tensor]:
        """Each target's `<name>_orig` (the weights) or `<name>_mask` buffer of torch.nn.utils.prune."""
        return [getattr(module, f"{name}_{kind}") for module, name in self.layout.targets]

    def refresh_masks(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self._pruning_tensors("mask"), self.layout.masks([s.detach() for s in self.scores]))

    def state_dict(self) -> dict:
        state = {"scores": [s.detach().cpu() for s in self.scores], "calls": self.calls,
                 "score_optimizer": self.score_optimizer.state_dict()}
        if self.multiplier is not None:
            state.update(multiplier=self.multiplier.state_dict(), dual_optimizer=self.dual_optimizer.state_dict())
        if self.heldout is not None:
            state["heldout"] = self.heldout.state_dict()
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
        if self.heldout is not None and "heldout" in state:
            self.heldout.load_state_dict(state["heldout"])
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

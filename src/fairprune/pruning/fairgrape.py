"""FairGRAPE (Lin et al., ECCV 2022): keep, in every layer, the weights whose importance is shared
among the groups as it was before pruning (docs/methods.md; settings in `prune.fairgrape`).

Per round, on the training split:
1. per-group importance I_k(w) = sum_b (w * dL_{k,b}/dw)^2 over batches b holding only group k's
   samples (gradients taken fresh for every batch, so nothing accumulates across groups or
   batches; BatchNorm in eval mode, so scoring does not move its statistics). One forward and
   backward per training sample: the cost of one epoch.
2. per layer, group k's target share p*_k = sum_w I_k(w) / sum_j sum_w I_j(w) over the weights
   still kept; then greedily keep the next most important weight (by I_k) of the group whose
   share of the kept importance is furthest below its target, until the layer keeps its quota
   (the same fraction in every layer). The greedy is sequential by nature; it runs compiled
   (numba), with the per-group sorting vectorised (`greedy_keep`). No per-weight Python loop.
3. rounds keep `keep_per_round` of the remaining weights (the last stops at the target), with
   `retrain_epochs` of plain training between rounds; the stage's fine-tuning follows the last.
The public code's bugs (no zero_grad between groups, an optimizer step while scoring, the
normalisation applied to one group only, the per-weight Python loop) are not reproduced.
"""
from __future__ import annotations

import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from fairprune.config import FairgrapeParams
from fairprune.evaluation import evaluate_split
from fairprune.pruning.base import PruneContext, PruningMethod, prunable_weights, register, round_densities


def group_importance(model: nn.Module, targets, data, device: torch.device, batch_size: int) -> list[torch.Tensor]:
    """Per target weight, a (G, *weight.shape) tensor of each group's importance sum_b (w * dL_b/dw)^2."""
    images, labels, groups = data.subset("train")
    importance = [torch.zeros(data.num_groups, *getattr(m, n).shape, device=device) for m, n in targets]
    was_training = model.training
    model.eval()
    for k in range(data.num_groups):
        idx = torch.nonzero(groups == k).flatten()
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            x = images[part].to(device).float().div_(255.0)
            loss = F.cross_entropy(model(x).float(), labels[part].to(device))
            weights = [getattr(m, n) for m, n in targets]  # the pruning hooks' mask * weight of this forward
            with torch.no_grad():
                for acc, w, g in zip(importance, weights, torch.autograd.grad(loss, weights)):
                    taylor = w * g
                    acc[k].addcmul_(taylor, taylor)
    model.train(was_training)
    return importance


def greedy_keep(importance: np.ndarray, candidates: np.ndarray, keep: int, para_batch: int = 1) -> np.ndarray:
    """FairGRAPE's greedy selection in one layer: a boolean mask over the layer's weights keeping
    `keep` of the `candidates` (the weights still kept).

    importance: (G, n) per-group importance of every weight. Starting from equal shares, repeat:
    the group k whose share of the selected importance (sum over selected weights of I_j, for each
    j, normalised) is furthest below its target takes its next most important unselected weight;
    every `para_batch` selections the choice is made again. Ties go to the lower group index and,
    within a group, to the lower weight index.

    The choice depends on every selection before it, so it cannot be batched (measured: the chosen
    group changes after 1.2 selections on average). The sorting is vectorised and the sequential
    part is a loop compiled by numba: no Python code runs per weight."""
    imp32 = np.ascontiguousarray(importance[:, candidates], dtype=np.float32)
    if not np.isfinite(imp32).all() or (imp32 < 0).any():
        raise ValueError("FairGRAPE: importance must be finite and non-negative (has the model diverged?)")
    imp = imp32.astype(np.float64)
    groups = imp.shape[0]
    totals = imp.sum(1)
    target = totals / totals.sum() if totals.sum() > 0 else np.full(groups, 1.0 / groups)
    chosen = _greedy(imp, _descending(imp32), target, min(keep, imp.shape[1]), para_batch)
    mask = np.zeros(importance.shape[1], dtype=bool)
    mask[candidates[chosen]] = True
    return mask


def _descending(imp: np.ndarray) -> np.ndarray:
    """Each row's indices by decreasing value, ties to the lower index: argsort(-imp, stable), about 3x
    faster as one unstable sort of unique 64-bit keys (a non-negative float32's bits order like the
    float; the low 32 bits carry the index)."""
    bits = imp.view(np.uint32).astype(np.uint64)
    keys = ((np.uint64(0xFFFFFFFF) - bits) << np.uint64(32)) | np.arange(imp.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


@numba.njit(cache=True)
def _greedy(imp, orders, target, keep, para_batch):  # pragma: no cover (compiled)
    groups, n = imp.shape
    chosen = np.zeros(n, dtype=np.bool_)
    pointer = np.zeros(groups, dtype=np.int64)
    sums = np.zeros(groups)
    shares = np.full(groups, 1.0 / groups)
    count, k = 0, 0
    while count < keep:
        if count % para_batch == 0:
            k = int(np.argmin(shares - target))
        while chosen[orders[k, pointer[k]]]:
            pointer[k] += 1
        w = orders[k, pointer[k]]
        chosen[w] = True
        count += 1
        total = 0.0
        for j in range(groups):
            sums[j] += imp[j, w]
            total += sums[j]
        if total > 0:
            for j in range(groups):
                shares[j] = sums[j] / total
    return chosen


@register
class FairGrape(PruningMethod):
    """FairGRAPE: per-group importance, greedy per-layer selection that keeps every group's share of
    the importance, in rounds with short retraining between them."""

    name = "fairgrape"
    reads = ("fairgrape",)

    def prune(self, model: nn.Module, sparsity: float, ctx: PruneContext) -> nn.Module:
        settings = FairgrapeParams(**ctx.options.get("fairgrape", {}))
        targets = prunable_weights(model, ctx.exclude_output_layer)
        if sparsity <= 0:
            return model
        for module, name in targets:
            torch_prune.identity(module, name)
        densities = round_densities(sparsity, settings.keep_per_round)
        self.round_seconds = []
        for r, density in enumerate(densities, start=1):
            began = time.perf_counter()
            importance = group_importance(model, targets, ctx.data, ctx.device, settings.batch_size)
            shares = []
            for (module, name), imp in zip(targets, importance):
                current = getattr(module, f"{name}_mask")
                flat = imp.flatten(1).cpu().numpy()
                candidates = np.nonzero(current.flatten().cpu().numpy())[0]
                keep = int(round(density * current.numel()))
                mask = greedy_keep(flat, candidates, keep, settings.para_batch)
                with torch.no_grad():
                    current.copy_(torch.from_numpy(mask).view_as(current).to(current))
                kept = flat[:, mask].sum(1)
                shares.append(kept / max(kept.sum(), 1e-30))
            self.round_seconds.append(time.perf_counter() - began)
            if ctx.log:
                names = list(getattr(ctx.data, "group_names", range(ctx.data.num_groups)))
                val = evaluate_split(model, ctx.data, "val", 1024, ctx.device).stats()  # right after this round's cut
                ctx.log({"fairgrape/round": r, "fairgrape/density": density,
                         "fairgrape/round_s": self.round_seconds[-1],
                         **{f"fairgrape/importance_share/{g}": float(np.mean([s[i] for s in shares]))
                            for i, g in enumerate(names)},
                         **{f"fairgrape/val_acc/{g}": float(a) for g, a in zip(names, val.accuracy)}}, r)
            if r < len(densities) and settings.retrain_epochs and ctx.retrain is not None:
                ctx.retrain(model, settings.retrain_epochs, f"fairgrape round {r}/{len(densities)}")
        return model

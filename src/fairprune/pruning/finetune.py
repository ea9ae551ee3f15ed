"""Prune a dense checkpoint and fine-tune it with the mask fixed: the work of one `prune` stage,
shared with hyperparameter tuning (whose trials must not retrain the dense model).

`<method>+<arm>` runs one of Tran et al.'s mitigation arms: fair_bf prunes the mitigated dense
model and fine-tunes plainly, fair_aft prunes the plain one and fine-tunes under the constraints,
fair_both does both.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fairprune import artifacts, models, training
from fairprune.config import MITIGATED_DENSE_ARMS, MITIGATED_FINETUNE_ARMS, Params, split_arm
from fairprune.errors import DataError
from fairprune.evaluation import evaluate_split
from fairprune.pruning.base import PruneContext, get_method, measure_sparsity
from fairprune.pruning.structured import count_params


@dataclass
class PrunedRun:
    model: nn.Module
    history: list[dict]
    start: Path  # the dense checkpoint it started from
    method: object  # the PruningMethod
    arm: str
    dense_params: int
    at_pruning: dict  # size right after pruning, before fine-tuning
    dense_extra: dict = field(default_factory=dict)


def start_checkpoint(params: Params, method_spec: str, seed: int) -> Path:
    _, arm = split_arm(method_spec)
    variant = params.mitigation.variant if arm in MITIGATED_DENSE_ARMS else "plain"
    path = artifacts.dense_model(seed, variant)
    if not path.exists():
        raise DataError(f"the dense model {path} is missing; run `dvc repro train` first (seed {seed} must be "
                        f"in base.seeds and '{variant}' in train.variants)")
    return path


def method_params(params: Params, method_spec: str) -> dict:
    """Every param a `prune@<method_spec>-...` stage reads besides base.device: the method's own
    `prune.*` settings (its `reads`), the fine-tuning and, for a fair arm, the mitigation settings.
    The validate stage writes it to data/method_params/<method_spec>.json, the stage's DVC dependency."""
    name, arm = split_arm(method_spec)
    prune = params.prune.model_dump()
    return {"method": method_spec,
            "prune": {key: prune[key] for key in ("exclude_output_layer", *get_method(name).reads)},
            "finetune": params.finetune.model_dump(),
            **({"mitigation": params.mitigation.model_dump()} if arm else {})}


def size_of(model: nn.Module, structured: bool, dense_params: int, exclude_output_layer: bool) -> dict:
    """Unstructured: fraction of zero weights in the prunable layers; structured: of parameters removed."""
    size = measure_sparsity(model, exclude_output_layer)
    if structured:
        size["sparsity_actual"] = 1 - size["params_total"] / dense_params
    return size


def _own_step(method, device: torch.device):
    if not method.owns_finetuning:
        return None
    return lambda model, optimizer: method.training_step(model, optimizer, device)


def prune_and_finetune(params: Params, method_spec: str, sparsity: float, seed: int, data, device: torch.device, *,
                       log: Callable[[dict, int], None] | None = None, checkpoint: Path | None = None,
                       resume_key: str = "", extra_state: dict | None = None,
                       after_pruning: Callable[[], None] | None = None) -> PrunedRun:
    """Prune the dense model of `seed` to `sparsity` with `method_spec`, then fine-tune it
    (under the mitigation constraints for fair_aft / fair_both). The mask is not made permanent."""
    name, arm = split_arm(method_spec)
    method = get_method(name)
    method.check(sparsity)
    start = start_checkpoint(params, method_spec, seed)
    model, dense_extra = models.load(start)
    model.to(device)  # data-driven scores (SNIP, GraSP, BiFP) run their batches on the device
    dense_params = count_params(model)
    key_name = artifacts.pruned_key(method_spec, sparsity, seed)

    def retrain(net, epochs, desc):
        opt = params.finetune.model_copy(update={"epochs": epochs})
        return training.fit(net, data, opt, device, seed=seed, desc=desc)

    ctx = PruneContext(data=data, device=device, seed=seed, exclude_output_layer=params.prune.exclude_output_layer,
                       options={**method_params(params, method_spec)["prune"], "finetune_epochs": params.finetune.epochs},
                       retrain=retrain, rewind_state=dense_extra.get("rewind_state"), log=log)
    model = method.prune(model, sparsity, ctx)
    # A method that exports its structure only after fine-tuning keeps a same-shaped twin to size it now.
    shaped = getattr(method, "export_twin", model)
    at_pruning = size_of(shaped, method.structured, dense_params, params.prune.exclude_output_layer)
    if after_pruning:
        after_pruning()
    mitigation = params.mitigation if arm in MITIGATED_FINETUNE_ARMS else None
    check_epoch = None
    if hasattr(method, "check_epoch"):  # it compares each epoch with the model right after pruning
        start_predictions = evaluate_split(model, data, "val", 1024, device)
        check_epoch = lambda predictions, epoch: method.check_epoch(predictions, epoch, start_predictions)  # noqa: E731
    history = training.fit(model, data, params.finetune, device, seed=seed, checkpoint=checkpoint,
                           resume_key=resume_key, log=log, desc=f"finetune {key_name}", extra_state=extra_state,
                           before_epoch=lambda e: method.before_finetune_epoch(model, e, params.finetune.epochs),
                           mitigation=mitigation, step_factory=_own_step(method, device),
                           check_epoch=check_epoch)
    model = method.finish(model)
    return PrunedRun(model=model, history=history, start=start, method=method, arm=arm,
                     dense_params=dense_params, at_pruning=at_pruning, dense_extra=dense_extra)

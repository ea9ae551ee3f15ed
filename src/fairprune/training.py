"""The training loop: SGD with momentum, an LR schedule, bf16 autocast on CUDA, a progress bar,
a checkpoint after every epoch and resume after an interruption.

Pruned models are trained through the same loop: `torch.nn.utils.prune` re-parametrises each
weight as weight_orig * mask, so the mask stays fixed while the surviving weights learn.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fairprune import tensorfile
from fairprune.config import MitigationParams, OptimParams
from fairprune.device import autocast, to_device
from fairprune.errors import TrainingDiverged
from fairprune.evaluation import evaluate_split

LogFn = Callable[[dict[str, float], int], None]
NAN_CHECK_EVERY = 25


def fingerprint(*parts) -> str:
    """A short hash of everything that makes a checkpoint resumable (params, seed, inputs)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_files() -> list[Path]:
    return sorted(Path(__file__).parent.rglob("*.py"))


def inputs_digest(paths: list[Path]) -> str:
    """A hash of the files' contents."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(Path(path).name.encode())
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def stage_fingerprint(*parts, inputs: list[Path]) -> str:
    """`fingerprint` of the parts, of the contents of the input files and of fairprune's code. DVC
    reruns a stage when any of these changed; a checkpoint or cached result that the stage left
    under other inputs or other code must then not be resumed or reported as the new run's."""
    return fingerprint(inputs_digest([*dict.fromkeys(inputs), *source_files()]), *parts)


def read_checkpoint(path: Path | None, expected: str) -> dict | None:
    """The checkpoint at `path` if it was written by a run with the same fingerprint. A corrupted or
    unreadable one (truncated by a full disk, or holding objects other than tensors) is set aside as
    `<name>.bad` with a message, and the stage starts over instead of failing on every rerun."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = tensorfile.load(path, "cpu")
    except (tensorfile.CorruptFile, tensorfile.UnsafeFile) as exc:
        aside = Path(path).with_name(Path(path).name + ".bad")
        os.replace(path, aside)
        tqdm.write(f"warning: {exc}\nwarning: set it aside as {aside}; starting this stage from the beginning")
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == expected else None


def _write_checkpoint(path: Path, state: dict) -> None:
    tensorfile.save(state, path)


def make_optimizer(model: torch.nn.Module, opt: OptimParams):
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    epochs = max(opt.epochs, 1)
    if opt.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    elif opt.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler


class PlainStep:
    """One ERM step: cross-entropy, backward, optimizer step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, device

    def __call__(self, x, y, groups):
        with autocast(self.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _train_epoch(model, images, targets, groups, opt: OptimParams, step, device, generator, epoch: int, desc: str):
    model.train()
    order = torch.randperm(len(targets), generator=generator).to(device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    steps = math.ceil(len(targets) / opt.batch_size)
    bar = tqdm(range(steps), desc=f"{desc} epoch {epoch + 1}", leave=False, mininterval=1, disable=steps < 50)
    for i in bar:
        idx = order[i * opt.batch_size:(i + 1) * opt.batch_size]
        x = images[idx].float().div_(255.0)
        y = targets[idx]
        if opt.hflip:
            flip = (torch.rand(len(x), generator=generator) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss, logits = step(x, y, groups[idx])
        total_loss += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        if (i + 1) % NAN_CHECK_EVERY == 0 or i + 1 == steps:
            if not torch.isfinite(total_loss):
                raise TrainingDiverged(
                    f"{desc}: the training loss became {float(total_loss)} in epoch {epoch + 1} "
                    f"(by step {i + 1}); lower the learning rate (lr = {opt.lr}) or check the data")
    n = len(targets)
    return float(total_loss) / n, float(correct) / n


def fit(model: torch.nn.Module, data, opt: OptimParams, device: torch.device, *, seed: int,
        checkpoint: Path | None = None, resume_key: str = "", log: LogFn | None = None,
        desc: str = "train", extra_state: dict | None = None,
        before_epoch: Callable[[int], None] | None = None,
        after_epoch: Callable[[int], None] | None = None,
        mitigation: MitigationParams | None = None,
        step_factory: Callable[[torch.nn.Module, torch.optim.Optimizer], object] | None = None,
        check_epoch: Callable[[object, int], None] | None = None) -> list[dict]:
    """Train `model` for opt.epochs on the train split, validating per group after each epoch.

    Returns the per-epoch history. With a checkpoint path, state is saved after every epoch
    and a matching checkpoint (same resume_key) is resumed from its next epoch.
    `before_epoch(i)` runs before epoch i (0-based; gradual pruning updates masks there) and
    `after_epoch(n)` after n epochs, before the checkpoint (so what it stores in
    `extra_state` is checkpointed). `step_factory(model, optimizer)` replaces the training step
    (methods such as BiFP that train their mask along with the weights). `check_epoch(val_predictions,
    n)` sees the validation predictions after n epochs and may stop the run (BiFP's collapse guard).
    """
    model.to(device)
    optimizer, scheduler = make_optimizer(model, opt)
    images, targets, groups = data.subset("train")
    images, targets, groups = to_device(images, device), targets.to(device), groups.to(device)
    if step_factory is not None:
        step = step_factory(model, optimizer)
    elif mitigation is None:
        step = PlainStep(model, optimizer, device)
    else:
        from fairprune.fairness.constraints import ConstrainedStep

        step = ConstrainedStep(model, optimizer, data.num_groups, mitigation, device, log)
    generator = torch.Generator().manual_seed(seed)
    start, history = 0, []
    state = read_checkpoint(checkpoint, resume_key)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step.load_state_dict(state["step"])
        start, history = state["epoch"], state["history"]
        tqdm.write(f"{desc}: resuming from the checkpoint after epoch {start}")
    steps_per_epoch = math.ceil(len(targets) / opt.batch_size)
    epochs = tqdm(range(start, opt.epochs), desc=desc, initial=start, total=opt.epochs, unit="epoch")
    for epoch in epochs:
        if before_epoch:
            before_epoch(epoch)
        began = time.perf_counter()
        train_loss, train_acc = _train_epoch(model, images, targets, groups, opt, step, device, generator, epoch, desc)
        train_s = time.perf_counter() - began + (history[-1].get("train_s", 0.0) if history else 0.0)
        scheduler.step()
        val_predictions = evaluate_split(model, data, "val", 1024, device)
        if check_epoch:
            check_epoch(val_predictions, epoch + 1)
        val = val_predictions.stats()
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                  "val_loss": val.overall_loss, "val_acc": val.overall_accuracy,
                  "lr": optimizer.param_groups[0]["lr"], "steps": (epoch + 1) * steps_per_epoch, "train_s": train_s}
        record.update({f"val_acc/{g}": float(a) for g, a in zip(data.group_names, val.accuracy)})
        history.append(record)
        worst = min(zip(val.accuracy, data.group_names))
        epochs.set_postfix_str(f"loss {train_loss:.3f} val acc {val.overall_accuracy:.3f} worst group "
                               f"{worst[1]} {worst[0]:.3f}", refresh=False)
        if log:
            log(record, epoch + 1)
        if after_epoch:
            after_epoch(epoch + 1)
        if checkpoint is not None:
            _write_checkpoint(checkpoint, {
                "fingerprint": resume_key, "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "step": step.state_dict(),
                **(extra_state or {}),
            })
    if history:
        final = history[-1]
        groups = {k.removeprefix("val_acc/"): v for k, v in final.items() if k.startswith("val_acc/")}
        worst = min(groups, key=groups.get) if groups else None
        tqdm.write(f"{desc}: {final['epoch']} epochs, validation accuracy {final['val_acc']:.4f}"
                   + (f", worst group {worst} {groups[worst]:.4f}, best {max(groups.values()):.4f}" if worst else ""))
    return history


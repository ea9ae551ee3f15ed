"""One pass over a split that collects per-sample target, prediction, loss and group."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fairprune.device import autocast, to_device
from fairprune.fairness import GroupStats, group_stats
from fairprune.fairness.surrogate import margins


@dataclass
class Predictions:
    y_true: np.ndarray
    y_pred: np.ndarray
    loss: np.ndarray
    group: np.ndarray
    group_names: list[str]
    num_classes: int
    margin: np.ndarray | None = None  # f_y(x) - max_{c != y} f_c(x): BiFP's surrogates are functions of it

    def stats(self) -> GroupStats:
        return group_stats(self.y_true, self.y_pred, self.loss, self.group, len(self.group_names), self.num_classes)

    def save(self, path) -> None:
        np.savez(path, y_true=self.y_true, y_pred=self.y_pred, group=self.group, loss=self.loss,
                 group_names=np.asarray(self.group_names), num_classes=self.num_classes,
                 **({} if self.margin is None else {"margin": self.margin}))

    @classmethod
    def load(cls, path) -> "Predictions":
        with np.load(path) as f:
            return cls(f["y_true"], f["y_pred"], f["loss"], f["group"], [str(g) for g in f["group_names"]],
                       int(f["num_classes"]), f["margin"] if "margin" in f else None)


def _batches(images: torch.Tensor, batch_size: int, device: torch.device):
    images = to_device(images, device)
    for start in range(0, len(images), batch_size):
        yield start, images[start:start + batch_size].float().div_(255.0)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor,
            group_names: list[str], num_classes: int, batch_size: int, device: torch.device) -> Predictions:
    model.eval().to(device)
    targets_dev = targets.to(device)
    preds, losses = torch.empty_like(targets_dev), torch.empty(len(targets), device=device)
    margin = torch.empty(len(targets), device=device)
    for start, x in _batches(images, batch_size, device):
        with autocast(device):
            logits = model(x).float()
        y = targets_dev[start:start + len(x)]
        losses[start:start + len(x)] = F.cross_entropy(logits, y, reduction="none")
        preds[start:start + len(x)] = logits.argmax(1)
        margin[start:start + len(x)] = margins(logits, y)
    return Predictions(targets.numpy(), preds.cpu().numpy(), losses.cpu().numpy(), groups.numpy(),
                       list(group_names), num_classes, margin.cpu().numpy())


@torch.no_grad()
def plain_accuracy(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                   device: torch.device) -> float:
    """Accuracy alone: the baseline the per-group pass is benchmarked against."""
    model.eval().to(device)
    targets_dev, correct = targets.to(device), 0
    for start, x in _batches(images, batch_size, device):
        with autocast(device):
            correct += int((model(x).argmax(1) == targets_dev[start:start + len(x)]).sum())
    return correct / max(len(targets), 1)


def evaluate_split(model, data, split: str, batch_size: int, device: torch.device) -> Predictions:
    images, targets, groups = data.subset(split)
    return predict(model, images, targets, groups, data.group_names, data.num_classes, batch_size, device)

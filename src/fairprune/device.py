"""Device selection and the CUDA path (bf16 autocast, pinned host memory)."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def resolve(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from fairprune.errors import ParamsError
        raise ParamsError("base.device", device, "'auto' or 'cpu' (no CUDA device is visible here)")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size per run: let cuDNN pick its fastest kernels
    return torch.device(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

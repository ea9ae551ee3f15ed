"""Files of tensors and plain values only: every model, checkpoint and prepared-data file.

`torch.load(weights_only=False)` unpickles arbitrary objects, so a planted file runs code on the
machine that loads it (and models travel through DVC remotes). Everything here is loaded with
`weights_only=True`: tensors, dicts, lists, strings and numbers, nothing that executes. A file
that holds anything else is refused with a message naming it; so is a truncated or corrupted one.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from fairprune.errors import DataError


class UnsafeFile(DataError):
    """The file holds objects other than tensors and plain values (an old format, or a planted payload)."""


class CorruptFile(DataError):
    """The file is empty, truncated or not a torch file at all."""


def save(obj, path: str | Path) -> None:
    """Write atomically (a temporary file renamed into place): a crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: str | Path, map_location: str | torch.device = "cpu", *, rerun: str = "the stage that wrote it"):
    """The file's contents, unpickled with weights_only=True; `rerun` names the fix in messages."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CorruptFile(f"{path} is empty (an interrupted write?); delete it and rerun {rerun}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in reason or "Unsupported" in str(exc) or "GLOBAL" in str(exc):
            raise UnsafeFile(
                f"{path} holds objects other than tensors and plain values, so it was NOT loaded (loading it "
                f"could run code planted in it). If you wrote it with an older fairprune, delete it and rerun "
                f"{rerun}; if not, do not trust its source") from None
        raise CorruptFile(f"{path} is not a readable torch file ({reason}); delete it and rerun {rerun}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CorruptFile(f"{path} is truncated or corrupted ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and rerun {rerun}") from None

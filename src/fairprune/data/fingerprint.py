"""The `validate` stage: check the whole params file, and fingerprint the data source it names.

DVC cannot list a dataset's files as dependencies of `prepare` (the path is a param, possibly null,
and a manifest names its images inside a CSV), so this always-run stage writes
`data/source.json`, a digest of every file the data comes from (name, size, modification time; a
manifest's CSV by content, then each image it lists), which changes exactly when the data does.
`prepare` depends on it: editing a manifest, replacing the tarball or adding images reruns
`prepare`, and nothing else does. It writes `data/method_params/<method>.json`, the params each
method's prune stages read (their dependency instead of every `prune.*` key). It also writes `data/params.ok` once params.yaml validates, so an
invalid file stops `dvc repro` before DVC deletes any output. Likewise an MLflow store the stages
could not write to (`fairprune.tracking.store_problem`).

    python pipeline/validate.py          (the `validate` stage of dvc.yaml)
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from fairprune import artifacts, config
from fairprune.config import DataParams
from fairprune.errors import ParamsError

STAMP, SOURCE, METHOD_PARAMS = Path("data/params.ok"), artifacts.DATA_SOURCE, Path("data/method_params")


def _stat_line(path: Path) -> str:
    stat = path.stat()
    return f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}"


def _tree(root: Path) -> list[str]:
    if root.is_file():
        return [_stat_line(root)]
    return [_stat_line(p) for p in sorted(root.rglob("*")) if p.is_file()]


def source_lines(data: DataParams) -> list[str]:
    """What the data comes from, one line per file (missing paths are left to prepare to name)."""
    if data.dataset == "digits":
        import sklearn

        return [f"scikit-learn digits {sklearn.__version__}"]
    root = Path(data.root)
    if not root.exists():
        return [f"{root}\tmissing"]
    if data.dataset != "manifest" or not root.is_file():
        return _tree(root)
    lines = [f"{root}\t{hashlib.sha256(root.read_bytes()).hexdigest()}"]
    images = Path(data.image_root) if data.image_root else root.parent
    with open(root, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            image = images / (row.get("path") or "")
            lines.append(_stat_line(image) if image.is_file() else f"{image}\tmissing")
    return lines


def write_method_params(params) -> None:
    """One file per pruning method: the params its prune stages read, their DVC dependency (a BiFP
    setting reruns the BiFP stages only)."""
    import shutil

    from fairprune.pruning.finetune import method_params

    shutil.rmtree(METHOD_PARAMS, ignore_errors=True)
    METHOD_PARAMS.mkdir(parents=True)
    for spec in params.prune.methods:
        (METHOD_PARAMS / f"{spec}.json").write_text(json.dumps(method_params(params, spec), indent=1, sort_keys=True) + "\n")


def main() -> int:
    try:
        params = config.load("params.yaml")
        config.check_paths(params)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fairprune.tracking import store_problem

    problem = store_problem(params.base)
    if problem:
        print(f"error: {problem} (checked before any stage writes)", file=sys.stderr)
        return 2
    lines = source_lines(params.data)
    record = {"dataset": params.data.dataset, "root": params.data.root, "files": len(lines),
              "digest": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
    SOURCE.parent.mkdir(parents=True, exist_ok=True)
    SOURCE.write_text(json.dumps(record, indent=1) + "\n")
    write_method_params(params)
    STAMP.write_text("params.yaml validated by the validate stage\n")
    print(f"params.yaml: ok; data source {record['dataset']}: {record['files']} file(s), digest {record['digest'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`prepare` on a real archive, with data.max_samples and with every image: this tree's loaders (labels first,
only the kept images decoded) against an earlier commit's (every image decoded, then subsampled), each in its
own process importing its own `src/`, one after the other in this run; the prepared images must be identical.

    python benchmarks/bench_lazy_decoding.py --root ../shared/data/utkface/UTKFace.tar.gz [--baseline 5c0f62b]
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from project_copy import checkout

CHILD = """
import sys, time
from fairprune.config import DataParams
from fairprune.data import prepare
start = time.perf_counter()
data = prepare(DataParams(dataset="utkface", root=sys.argv[1], target="race", group="race", image_size=32,
                          max_samples=int(sys.argv[2]) or None, imbalance={"groups": [], "fraction": 1.0}))
print(time.perf_counter() - start, len(data.targets), int(data.images.long().sum()))
"""


def timed_prepare(src: Path, root: str, max_samples: int) -> tuple[float, int, int]:
    env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, root, str(max_samples)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="UTKFace.tar.gz (or the extracted folder)")
    parser.add_argument("--baseline", default="5c0f62b", help="a commit whose loaders decode every image")
    parser.add_argument("--max-samples", type=int, nargs="+", default=[2000, 0], help="0: every image")
    args = parser.parse_args()
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        checkout(args.baseline, Path(tmp))
        for max_samples in args.max_samples:
            old = timed_prepare(Path(tmp) / "src", args.root, max_samples)
            new = timed_prepare(Path(__file__).resolve().parents[1] / "src", args.root, max_samples)
            same = old[1:] == new[1:]
            identical &= same
            print(f"UTKFace race, data.max_samples {max_samples or 'null'} -> {new[1]} images: prepare {new[0]:.1f} s "
                  f"vs {old[0]:.1f} s at {args.baseline} (decode all, then subsample) = {new[0] / old[0]:.2f}x; "
                  f"prepared images {'identical' if same else 'DIFFERENT'}", flush=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

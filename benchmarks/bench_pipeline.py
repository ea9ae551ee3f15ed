"""Wall time of the default pipeline from a fresh copy, and of a second `dvc repro` with nothing changed.

Targets: first run within 600 s on a 2-core CPU (installing excluded); no-op rerun under 10 s.

    python benchmarks/bench_pipeline.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd, cwd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("pipeline", "src", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        subprocess.run(["dvc", "init", "-q"], cwd=work, env=env, check=True)
        first = timed([sys.executable, "-m", "fairprune.tracking"], work, env) + timed(["dvc", "repro"], work, env)
        second = timed(["dvc", "repro"], work, env)
        print(f"default pipeline, fresh copy   {first:7.1f} s   ({first / 600:.2f} of the 600 s budget)")
        print(f"second dvc repro, no change    {second:7.1f} s   ({second / 10:.2f} of the 10 s budget)")
        print((work / "reports" / "README.md").read_text().split("## Stage wall time (seconds)")[1].split("Gaps")[0])


if __name__ == "__main__":
    main()

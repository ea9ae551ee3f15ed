"""Small-CNN stages packed 1, 2 and 4 per GPU (fractional `run.gpus_per_stage`) through fairprune.parallel:
prune stages per minute per GPU, as ratios against one stage per GPU measured in the same run.

The default data (digits) at 32 px, the small CNN; the dense models are trained once (not timed), then
the same prune matrix (methods x sparsities x seeds) is run for each packing, its outputs removed
between runs. The Ray cluster is one local node with the GPUs torch sees (`--gpus` overrides: on a
machine without one, `--gpus 1` runs the same schedule on the CPU, a smoke test of the script only).

    python benchmarks/bench_gpu_packing.py [--packings 1 2 4] [--seeds 4] [--gpus N]
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from project_copy import make_copy, run_timed

SPARSITIES = [0.5, 0.7, 0.8, 0.9]


def set_params(work: Path, seeds: int, gpus_per_stage: float) -> None:
    path = work / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["base"]["seeds"] = list(range(seeds))
    params["data"]["image_size"] = 32
    params["model"]["arch"] = "small_cnn"
    params["prune"].update(methods=["magnitude", "snip"], sparsities=SPARSITIES)
    params["run"]["gpus_per_stage"] = gpus_per_stage
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packings", type=int, nargs="+", default=[1, 2, 4], help="stages per GPU")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--gpus", type=int, help="GPUs the local Ray node offers (default: torch's count)")
    args = parser.parse_args()
    import torch
    from ray.cluster_utils import Cluster

    gpus = args.gpus if args.gpus is not None else torch.cuda.device_count()
    if gpus < 1:
        print("error: no GPU here; `--gpus 1` runs the schedule on the CPU (a smoke test, not a measurement)",
              file=sys.stderr)
        return 2
    cpus = os.cpu_count() or 1
    stages = 2 * len(SPARSITIES) * args.seeds
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke test)"
    print(f"{stages} prune stages (magnitude and SNIP x {len(SPARSITIES)} sparsities x {args.seeds} seeds), "
          f"small CNN at 32 px, {gpus} GPU(s) on {device}, {cpus} CPUs", flush=True)
    os.environ["RAY_worker_niceness"] = "0"
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": cpus, "num_gpus": gpus})
    rates = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            env = {**make_copy(work), "RAY_ADDRESS": cluster.address}
            set_params(work, args.seeds, 1.0)
            run_timed(["dvc", "repro", "train"], work, env)  # the dense models, once
            for packing in args.packings:
                set_params(work, args.seeds, 1.0 / packing)
                for out in ("models/pruned", "metrics/prune", "metrics/curves/prune"):
                    shutil.rmtree(work / out, ignore_errors=True)
                seconds, _ = run_timed([sys.executable, "-m", "fairprune.parallel", "prune"], work, env)
                rates[packing] = stages / seconds * 60 / gpus
                print(f"{packing} stage(s) per GPU: {seconds:.0f} s, {rates[packing]:.1f} stages per minute per GPU, "
                      f"{rates[packing] / rates[args.packings[0]]:.2f}x {args.packings[0]} per GPU", flush=True)
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

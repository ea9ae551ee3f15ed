"""Cost of one training step under Tran et al.'s mitigation and CEAG versus a plain ERM step.

Targets: a relaxed step and a CEAG step (replay buffer included) at most 1.15x a plain step; a full
step (per-sample gradient norms and boundary distances) at most 3x a relaxed step (the paper reports
over 10x for its Eq. 7, timed here as full_literal). Steps of every kind run alternated in this
process on the same batches and model; the median of repeated timings is compared. The full_literal
step is timed amortised: its Hessian terms refreshed every `--hessian-every` steps, as in the
defaults (`--refresh-every-step` adds the un-amortised step).

    python benchmarks/bench_mitigation.py [--arch small_cnn] [--size 32] [--groups 5] [--batch 128]
                                          [--device cpu|cuda]
"""
import argparse
import statistics
import time

import torch

from fairprune import models
from fairprune.config import CeagParams, MitigationParams
from fairprune.fairness.constraints import ConstrainedStep
from fairprune.fairness.excess_gap import DenseReference, ExcessGapProblem
from fairprune.training import PlainStep


class Shapes:
    """What models.build reads from a dataset."""

    def __init__(self, channels, size, classes):
        self.input_shape, self.num_classes = (channels, size, size), classes
        self.mean, self.std = [0.5] * channels, [0.25] * channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hessian-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of `hessian-every` steps per kind")
    parser.add_argument("--refresh-every-step", action="store_true",
                        help="also time a full step whose Hessian terms are refreshed on every step (slow)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, as in training)")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    a = torch.randint(0, args.groups, (args.batch,), generator=g).to(device)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def make(kind):
        torch.manual_seed(0)
        model = models.build(args.arch, Shapes(args.channels, args.size, args.classes)).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if kind == "plain":
            return PlainStep(model, optimizer, device)
        if kind == "ceag":
            uniform = torch.full((args.groups,), 1.0 / args.groups, device=device)
            reference = DenseReference(uniform.clone(), 0.8, uniform.clone(), 0.5, uniform)
            problem = ExcessGapProblem(model, args.groups, reference, tolerance=0.01, buffer=40,
                                       constraint="accuracy_gap", device=device)
            return ConstrainedStep(model, optimizer, args.groups, CeagParams(), device, problem=problem,
                                   where="prune.ceag")
        variant, every, reference = {
            "relaxed": ("relaxed", 1, "population"), "full": ("full", 1, "population"),
            "full_literal": ("full_literal", args.hessian_every, "population"),
            "full_literal, group-mean reference": ("full_literal", args.hessian_every, "group_mean"),
            "full_literal (Hessian every step)": ("full_literal", 1, "population")}[kind]
        params = MitigationParams(variant=variant, hessian_every=every, reference=reference)
        return ConstrainedStep(model, optimizer, args.groups, params, device)

    kinds = ["plain", "relaxed", "ceag", "full", "full_literal", "full_literal, group-mean reference"] + (
        ["full_literal (Hessian every step)"] if args.refresh_every_step else [])
    steps = {k: make(k) for k in kinds}
    for step in steps.values():  # warm-up
        step(x, y, a)
    timings = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            synchronize()
            start = time.perf_counter()
            for _ in range(args.hessian_every):
                steps[kind](x, y, a)
            synchronize()
            timings[kind].append((time.perf_counter() - start) / args.hessian_every)
    median = {k: statistics.median(v) for k, v in timings.items()}
    print(f"{args.arch} {args.channels}x{args.size}x{args.size}, batch {args.batch}, {args.groups} groups, "
          f"{args.device} ({torch.get_num_threads()} threads); median of {args.rounds} rounds of {args.hessian_every} steps")
    for kind in kinds:
        print(f"{kind:36s} {median[kind] * 1000:8.1f} ms/step")
    print(f"relaxed / plain                      {median['relaxed'] / median['plain']:8.2f}x   (target <= 1.15x)")
    print(f"ceag / plain                         {median['ceag'] / median['plain']:8.2f}x   (target <= 1.15x)")
    print(f"full / relaxed                       {median['full'] / median['relaxed']:8.2f}x   (target <= 3x)")
    print(f"full_literal / relaxed               {median['full_literal'] / median['relaxed']:8.2f}x   "
          f"(Eq. 7 as written; Hessian terms every {args.hessian_every} steps)")
    print(f"full_literal (group-mean) / relaxed  "
          f"{median['full_literal, group-mean reference'] / median['relaxed']:8.2f}x")
    if args.refresh_every_step:
        print(f"full_literal, Hessian every step / relaxed "
              f"{median['full_literal (Hessian every step)'] / median['relaxed']:6.2f}x")


if __name__ == "__main__":
    main()

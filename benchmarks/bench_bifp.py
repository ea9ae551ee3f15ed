"""Cost of one BiFP outer iteration (K weight steps + one score step) against a plain fine-tuning step.

Target (K = 1): at most 2.2x a plain step (two forward/backward passes; BiP's public code needs
three). Both run alternated in this process on the same batches and a magnitude-pruned model; the
median of repeated timings is compared.

    python benchmarks/bench_bifp.py [--arch small_cnn] [--size 32] [--batch 128] [--inner-steps 1] [--device cpu]
                                    [--profile N]
"""
import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from fairprune import models
from fairprune.pruning import PruneContext, get_method
from fairprune.training import PlainStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=10, help="outer iterations per timed round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the N ops that take the most time in each step (device time on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = SimpleNamespace(input_shape=(3, args.size, args.size), num_classes=args.classes,
                             mean=[0.5] * 3, std=[0.25] * 3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    a = torch.randint(0, args.groups, (args.batch,), generator=g).to(device)

    def pruned(method):
        torch.manual_seed(0)
        model = models.build(args.arch, shapes).to(device).train()
        instance = get_method(method)
        ctx = PruneContext(data=SimpleNamespace(num_groups=args.groups), device=device,
                           options={"bifp": {"inner_steps": args.inner_steps}})
        instance.prune(model, args.sparsity, ctx)
        return model, instance, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    model, _, optimizer = pruned("magnitude")
    plain = PlainStep(model, optimizer, device)
    model, method, optimizer = pruned("bifp_uns")
    bifp = method.training_step(model, optimizer, device)
    per_outer = args.inner_steps + 1

    def timed(step, calls):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            step(x, y, a)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.iterations

    timed(plain, args.iterations)
    timed(bifp, args.iterations * per_outer)
    plain_s, bifp_s = [], []
    for _ in range(args.rounds):
        plain_s.append(timed(plain, args.iterations))
        bifp_s.append(timed(bifp, args.iterations * per_outer))
    p, b = statistics.median(plain_s), statistics.median(bifp_s)
    paired = statistics.median(bs / ps for ps, bs in zip(plain_s, bifp_s))
    print(f"{args.arch} 3x{args.size}x{args.size}, batch {args.batch}, sparsity {args.sparsity}, {args.device} "
          f"({torch.get_num_threads()} threads); median of {args.rounds} rounds")
    print(f"plain masked fine-tuning step     {p * 1000:8.2f} ms")
    print(f"BiFP outer iteration (K = {args.inner_steps})     {b * 1000:8.2f} ms")
    print(f"ratio                             {b / p:8.2f}x   (target <= 2.2x for K = 1)")
    print(f"median of the rounds' own ratios  {paired:8.2f}x   (less sensitive to load drifting between rounds)")
    top = method.layout.top
    print(f"mask refreshes that needed a full selection: {top.full_selections} of {top.calls}")
    plain_ops, bifp_ops = dispatched_ops(lambda: plain(x, y, a)), dispatched_ops(lambda: [bifp(x, y, a)
                                                                                          for _ in range(per_outer)])
    print(f"ATen ops dispatched: plain {plain_ops}, BiFP {bifp_ops}, ratio {bifp_ops / plain_ops:.2f}x "
          "(what bounds a small model's step on a GPU; on the CPU the optimisers and the mask selection take other paths)")
    if args.profile:
        for name, step in (("plain step", lambda: plain(x, y, a)),
                           ("BiFP outer iteration", lambda: [bifp(x, y, a) for _ in range(per_outer)])):
            print(f"\n{name}: the {args.profile} ops with the most self time, {args.iterations} calls")
            print(profile_table(step, device, args.iterations, args.profile))


def dispatched_ops(step) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    return sum(1 for event in profile.events() if event.name.startswith("aten::"))


def profile_table(step, device: torch.device, calls: int, rows: int) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(calls):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profile.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)


if __name__ == "__main__":
    main()

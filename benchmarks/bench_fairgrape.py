"""Cost of one FairGRAPE round (per-group importance over the training split + the greedy selection
in every layer) against one plain training epoch on the same data, alternated in this process so
that a loaded machine shifts both alike. Target: a round at most one epoch (UTKFace-sized data).

    python benchmarks/bench_fairgrape.py [--images 15400] [--size 32] [--groups 5] [--arch small_cnn]
"""
import argparse
import math
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn.utils import prune as torch_prune

from fairprune import models
from fairprune.pruning import prunable_weights
from fairprune.pruning.fairgrape import greedy_keep, group_importance
from fairprune.training import PlainStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=15400, help="training images (UTKFace's train split: ~15.4k)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.8, help="fraction a round keeps")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, args.classes, (args.images,), generator=g)
    groups = torch.randint(0, args.groups, (args.images,), generator=g)
    data = SimpleNamespace(num_groups=args.groups, subset=lambda split: (images, targets, groups),
                           input_shape=(3, args.size, args.size), num_classes=args.classes,
                           mean=[0.5] * 3, std=[0.25] * 3)
    torch.manual_seed(0)
    model = models.build(args.arch, data)
    targets_w = prunable_weights(model)
    for module, name in targets_w:
        torch_prune.identity(module, name)
    step = PlainStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), device)

    def epoch():
        model.train()
        order = torch.randperm(args.images, generator=g)
        for i in range(math.ceil(args.images / args.batch)):
            idx = order[i * args.batch:(i + 1) * args.batch]
            step(images[idx].float().div(255.0), targets[idx], groups[idx])

    def fairgrape_round():
        importance = group_importance(model, targets_w, data, device, args.batch)
        began = time.perf_counter()
        for (module, name), imp in zip(targets_w, importance):
            mask = getattr(module, f"{name}_mask")
            greedy_keep(imp.flatten(1).numpy(), np.nonzero(mask.flatten().numpy())[0],
                        int(round(args.density * mask.numel())))
        return time.perf_counter() - began

    timings = {"epoch": [], "round": [], "greedy": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        epoch()
        timings["epoch"].append(time.perf_counter() - start)
        start = time.perf_counter()
        timings["greedy"].append(fairgrape_round())
        timings["round"].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in timings.items()}
    weights = sum(getattr(m, n).numel() for m, n in targets_w)
    print(f"{args.arch} 3x{args.size}x{args.size}, {args.images} images, {args.groups} groups, {weights} prunable "
          f"weights, {torch.get_num_threads()} threads; median of {args.rounds} alternated rounds")
    print(f"plain training epoch        {median['epoch']:8.2f} s")
    print(f"FairGRAPE round             {median['round']:8.2f} s   (of which greedy selection {median['greedy']:.2f} s)")
    print(f"scoring / epoch             {(median['round'] - median['greedy']) / median['epoch']:8.2f}x   "
          f"(one forward and backward per training sample, no optimizer step)")
    print(f"round / epoch               {median['round'] / median['epoch']:8.2f}x   (target <= 1x)")


if __name__ == "__main__":
    main()

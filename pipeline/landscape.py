"""Stage `landscape` (BiFP Figure 8): loss, accuracy and accuracy gap on the evaluation split along
the straight line theta(alpha) = (1 - alpha) * theta_bifp + alpha * theta_ablation between BiFP's
pruned weights (bifp_uns, masks folded in) and each ablation's, at the claims sparsity, per seed.
Buffers (BatchNorm statistics) are interpolated the same way. Nothing to do without bifp_uns and
at least one ablation in prune.methods.
"""
import torch

from fairprune import artifacts, models
from fairprune.data import load_prepared
from fairprune.device import resolve
from fairprune.evaluation import evaluate_split
from fairprune.fairness import fairness_gaps
from fairprune.report_bifp import ABLATIONS, nearest
from fairprune.stage import run

ALPHAS = [i / 10 for i in range(11)]


def interpolate(start: dict, end: dict, alpha: float) -> dict:
    return {k: torch.lerp(v, end[k], alpha) if v.is_floating_point() else v for k, v in start.items()}


def main(params, args, timer):
    ablations = [m for m in ABLATIONS if m in params.prune.methods]
    sparsity = nearest(params.prune.sparsities, params.report.claims_sparsity)
    lines = []
    if "bifp_uns" in params.prune.methods and ablations:
        device = resolve(params.base.device)
        data = load_prepared(artifacts.PREPARED)
        for seed in params.base.seeds:
            bifp, _ = models.load(artifacts.pruned_model("bifp_uns", sparsity, seed))
            start = {k: v.clone() for k, v in bifp.state_dict().items()}
            for ablation in ablations:
                end = models.load(artifacts.pruned_model(ablation, sparsity, seed))[0].state_dict()
                points = []
                for alpha in ALPHAS:
                    bifp.load_state_dict(interpolate(start, end, alpha))
                    stats = evaluate_split(bifp, data, params.evaluate.split, params.evaluate.batch_size, device).stats()
                    points.append({"alpha": alpha, "loss": stats.overall_loss, "accuracy": stats.overall_accuracy,
                                   "accuracy_gap": fairness_gaps(stats, stats)["accuracy_gap"]})
                lines.append({"ablation": ablation, "seed": seed, "points": points})
                print(f"landscape bifp_uns -> {ablation} s{seed}: loss " +
                      " ".join(f"{p['loss']:.3f}" for p in points))
    artifacts.write_json(artifacts.LANDSCAPE_METRICS, {"sparsity": sparsity, "split": params.evaluate.split,
                                                       "lines": lines, "wall_s": timer.seconds})


if __name__ == "__main__":
    run(main)

"""Stage `diagnose`: Tran et al.'s per-group diagnostics of the dense model and every pruned model
(gradient norm, Hessian top eigenvalue, boundary closeness, Theorem 1's bound), and whether the
paper's claims hold on this data."""
from fairprune import artifacts, models, tracking
from fairprune.data import load_prepared
from fairprune.device import resolve
from fairprune.errors import DataError
from fairprune.fairness.diagnostics import (add_excess_loss_bound, diagnose, group_outputs, group_samples,
                                            one_shot_model, parameter_distance)
from fairprune.report_diagnostics import claims
from fairprune.stage import run


def main(params, args, timer):
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    cfg = params.diagnose
    jobs = artifacts.model_jobs(params)
    missing = [str(path) for *_, path in jobs if not path.exists()]
    if missing:
        raise DataError(f"models missing: {missing[:3]}; run `dvc repro` so the train and prune stages run first")
    samples, sizes = group_samples(data, cfg.split, cfg.per_group, cfg.seed, device)
    several, dense, records, vectors = len(params.base.seeds) > 1, {}, [], {}
    with tracking.stage_run(params.base, "diagnose", "diagnose", {"diagnose": cfg.model_dump()}):
        import mlflow
        for i, (label, sparsity, seed, path) in enumerate(jobs):
            name = artifacts.run_name(label, sparsity, seed, several)
            model = models.load(path)[0].to(device)
            # a pruned model's power iterations start from its dense model's eigenvectors: fewer steps
            start = vectors.setdefault(seed, {}) if label == "dense" else dict(vectors.get(seed, {}))
            record = diagnose(model, samples, sizes, iterations=cfg.iterations, seed=cfg.seed,
                              batch_size=cfg.batch_size, tolerance=cfg.tolerance, vectors=start)
            record.update(run=name, method=label, sparsity=sparsity, seed=seed, split=cfg.split)
            for group, group_name in zip(record["groups"], data.group_names):
                group["name"] = group_name
            if label == "dense":
                dense[seed] = (record, model)
            else:
                shot = one_shot_model(model, dense[seed][1])
                shot_record = None if shot is None else group_outputs(shot, samples, cfg.batch_size)
                add_excess_loss_bound(record, dense[seed][0], shot_record, parameter_distance(model, dense[seed][1]))
            artifacts.write_json(artifacts.DIAGNOSE_DIR / f"{name}.json", record)
            records.append(record)
            with mlflow.start_run(run_name=f"diagnose-{name}", nested=True,
                                  tags={"stage": "diagnose", "method": label, "sparsity": str(sparsity),
                                        "seed": str(seed)}):
                flat = {f"{key}/{g['name']}": g[key] for g in record["groups"]
                        for key in ("grad_norm", "hessian_top", "boundary_closeness", "excess_loss", "bound",
                                    "one_shot_excess_loss", "bound_ratio")
                        if g.get(key) is not None}
                tracking.log_metrics({**flat, **{f"population/{k}": v for k, v in record["population"].items()}})
            print(f"[{i + 1}/{len(jobs)}] {name:>24}: grad norm "
                  + " ".join(f"{g.get('grad_norm', float('nan')):.3g}" for g in record["groups"])
                  + f"  ({record['hvp_calls']} Hessian-vector products; {timer.seconds:.0f}s, about "
                  f"{timer.seconds / (i + 1) * (len(jobs) - i - 1):.0f}s left)")
        summary = claims(records)
        summary["wall_s"] = timer.seconds
        artifacts.write_json(artifacts.DIAGNOSE_METRICS, summary)
        tracking.log_metrics({k: v["value"] for k, v in summary["claims"].items() if v["value"] is not None})
    for key, claim in summary["claims"].items():
        print(f"{key}: {claim['value']} -> {claim['verdict']}")


if __name__ == "__main__":
    run(main)

"""Stage `tradeoff` (BiFP Figure 5): at `tradeoff.sparsity`, each method of `tradeoff.sweeps` is
pruned and fine-tuned once per swept value and seed, starting from the plain dense models, and
scored on the validation and evaluation splits. The report draws each method's Pareto front.

Each finished point is cached under checkpoints/tradeoff/, so an interrupted stage resumes where
it stopped; nothing is written to metrics/tradeoff.json until every point is done.
"""
from tqdm import tqdm

from fairprune import artifacts, tracking, training
from fairprune.config import nested_override
from fairprune.device import resolve
from fairprune.pruning.finetune import start_checkpoint
from fairprune.stage import run
from fairprune.tuning.objective import TrialRunner, with_overrides

CACHE = artifacts.CHECKPOINT_DIR / "tradeoff"


def points(params):
    for method, sweep in params.tradeoff.sweeps.items():
        for value in sweep.values:
            for seed in params.base.seeds:
                yield method, sweep.keys, value, seed


def point_key(point_params, method: str, sparsity: float, seed: int, split: str) -> str:
    """The cache key of one point: its params, and the contents of the models it starts from and is
    scored against, of the prepared data and of the code (a retrained dense model reruns the stage)."""
    return training.stage_fingerprint(
        "tradeoff", method, sparsity, seed, point_params.prune.model_dump(), point_params.finetune.model_dump(),
        point_params.mitigation.model_dump(), split,
        inputs=[start_checkpoint(point_params, method, seed), artifacts.dense_model(seed), artifacts.PREPARED])


def main(params, args, timer):
    todo = list(points(params))
    sparsity, split = params.tradeoff.sparsity, params.evaluate.split
    results = []
    if todo:
        CACHE.mkdir(parents=True, exist_ok=True)
        runner = TrialRunner(params, resolve(params.base.device), None, None)
        with tracking.stage_run(params.base, "tradeoff", "tradeoff", {"tradeoff": params.tradeoff.model_dump()}):
            import mlflow
            for method, keys, value, seed in tqdm(todo, desc="tradeoff points", unit="point"):
                point_params = with_overrides(params, nested_override(dict.fromkeys(keys, value)))
                cached = CACHE / f"{point_key(point_params, method, sparsity, seed, split)}.json"
                if cached.exists():
                    results.append(artifacts.read_json(cached))
                    continue
                with mlflow.start_run(run_name=f"{method}-{value}-s{seed}", nested=True,
                                      tags={"stage": "tradeoff", "method": method, "seed": str(seed)}):
                    mlflow.log_params({k: value for k in keys})
                    scores = runner.score(point_params, ("val", split), method=method, sparsity=sparsity, seed=seed)
                    record = {"method": method, "keys": keys, "value": value, "seed": seed,
                              "train_s": scores["val"].train_s, **scores["val"].record, **scores[split].record}
                    tracking.log_metrics({k: v for k, v in record.items() if isinstance(v, float)})
                artifacts.write_json(cached, record)
                results.append(record)
    artifacts.write_json(artifacts.TRADEOFF_METRICS, {"sparsity": sparsity, "split": split, "points": results,
                                                      "wall_s": timer.seconds})
    print(f"tradeoff: {len(results)} points at sparsity {sparsity:g} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    run(main)

"""Stage `prepare`: load the dataset, fix its splits, cache it as tensors, write its stats."""
from fairprune import artifacts, tracking
from fairprune.data import prepare
from fairprune.stage import run


def main(params, args, timer):
    data = prepare(params.data)
    stats = data.stats()
    data.save(artifacts.PREPARED)
    artifacts.write_json(artifacts.DATA_STATS, stats)
    artifacts.write_json(artifacts.PREPARE_METRICS, {"n": stats["n"], **{f"n_{s}": n for s, n in stats["n_per_split"].items()},
                                                     "skipped": stats["info"].get("skipped_malformed", 0),
                                                     "wall_s": timer.seconds, "info": stats["info"]})
    with tracking.stage_run(params.base, "prepare", "prepare", params.data.model_dump(),
                            dataset=params.data.dataset):
        tracking.log_metrics({f"n/{s}": n for s, n in stats["n_per_split"].items()})
        import mlflow
        mlflow.log_dict(stats, "data_stats.json")
    print(f"prepared {stats['n']} samples {stats['n_per_split']} of shape {stats['input_shape']} "
          f"in {timer.seconds:.1f}s")


if __name__ == "__main__":
    run(main)

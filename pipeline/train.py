"""Stage `train@<seed>`: train the dense model on the train split, with per-epoch checkpoints."""
import argparse

from fairprune import artifacts, models, tracking, training
from fairprune.data import load_prepared
from fairprune.device import resolve, seed_everything
from fairprune.stage import run


def main(params, args, timer):
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    seed_everything(args.seed)
    model = models.build(params.model.arch, data)
    key = training.fingerprint("train", params.model.model_dump(), params.train.model_dump(), args.seed,
                               data.stats()["n_per_split"])
    checkpoint = artifacts.CHECKPOINT_DIR / f"train-s{args.seed}.ckpt"
    previous = training.read_checkpoint(checkpoint, key)
    rewind = {"rewind_state": previous.get("rewind_state") if previous else None}

    def keep_rewind_point(epochs_done: int) -> None:
        if epochs_done == params.train.rewind_epoch:
            rewind["rewind_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if rewind["rewind_state"] is None:
        keep_rewind_point(0)
    dvc_stage = f"train@{args.seed}"
    with tracking.stage_run(params.base, "train", dvc_stage,
                            {"model": params.model.model_dump(), "train": params.train.model_dump()},
                            run_id=previous and previous.get("mlflow_run_id"), seed=args.seed,
                            method="dense", sparsity=0.0) as mlrun:
        rewind["mlflow_run_id"] = mlrun.info.run_id
        history = training.fit(model, data, params.train, device, seed=args.seed, checkpoint=checkpoint,
                               resume_key=key, log=tracking.log_metrics, desc=f"dense s{args.seed}",
                               extra_state=rewind,
                               after_epoch=keep_rewind_point)
        models.save(model, artifacts.dense_model(args.seed), seed=args.seed, history=history,
                    rewind_epoch=params.train.rewind_epoch, rewind_state=rewind["rewind_state"])
        tracking.log_model(model)
        final = history[-1] if history else {}
        artifacts.write_json(artifacts.train_metrics(args.seed), {**final, "seed": args.seed,
                                                                  "device": device.type, "wall_s": timer.seconds})
    checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    run(main, parser)

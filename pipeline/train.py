"""Stage `train@<seed>-<variant>`: train a dense model on the train split, with per-epoch checkpoints.

Variant `plain` is ERM; `relaxed` and `full` train the dense model under Tran et al.'s
constraints (the starting point of the Fair-bf and Fair-both arms)."""
import argparse

from fairprune import artifacts, models, tracking, training
from fairprune.config import DENSE_VARIANTS
from fairprune.data import load_prepared
from fairprune.device import resolve, seed_everything
from fairprune.stage import fill_matrix_args, run


def main(params, args, timer):
    fill_matrix_args(args, "train", {"seed": params.base.seeds, "variant": params.train.variants})
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    seed_everything(args.seed)
    model = models.build(params.model.arch, data)
    mitigation = None if args.variant == "plain" else params.mitigation.model_copy(update={"variant": args.variant})
    key = training.stage_fingerprint("train", params.model.model_dump(), params.train.model_dump(exclude={"variants"}),
                                     args.seed, args.variant, mitigation and mitigation.model_dump(),
                                     inputs=[artifacts.PREPARED])
    checkpoint = artifacts.CHECKPOINT_DIR / f"train-{args.variant}-s{args.seed}.ckpt"
    previous = training.read_checkpoint(checkpoint, key)
    rewind = {"rewind_state": previous.get("rewind_state") if previous else None}

    def keep_rewind_point(epochs_done: int) -> None:
        if epochs_done == params.train.rewind_epoch:
            rewind["rewind_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if rewind["rewind_state"] is None:
        keep_rewind_point(0)
    dvc_stage = f"train@{args.seed}-{args.variant}"
    logged = {"model": params.model.model_dump(), "train": params.train.model_dump()}
    if mitigation:
        logged["mitigation"] = mitigation.model_dump()
    with tracking.stage_run(params.base, "train", dvc_stage, logged,
                            run_id=previous and previous.get("mlflow_run_id"), system_metrics=True, seed=args.seed,
                            method=artifacts.dense_label(args.variant), sparsity=0.0) as mlrun:
        rewind["mlflow_run_id"] = mlrun.info.run_id
        tracking.log_dataset(data, artifacts.PREPARED, "training")
        history = training.fit(model, data, params.train, device, seed=args.seed, checkpoint=checkpoint,
                               resume_key=key, log=tracking.log_metrics, desc=f"dense {args.variant} s{args.seed}",
                               extra_state=rewind, after_epoch=keep_rewind_point, mitigation=mitigation)
        model_id = tracking.log_model(model, name=dvc_stage.replace("@", "-"))
        models.save(model, artifacts.dense_model(args.seed, args.variant), seed=args.seed, history=history,
                    rewind_epoch=params.train.rewind_epoch, rewind_state=rewind["rewind_state"])
        final = history[-1] if history else {}
        artifacts.write_curve(artifacts.train_curve(args.seed, args.variant), history)
        artifacts.write_json(artifacts.train_metrics(args.seed, args.variant),
                             {**final, "seed": args.seed, "variant": args.variant, "device": device.type,
                              "wall_s": timer.seconds, "mlflow_model_id": model_id})
    checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    # Under DVC these come from DVC_STAGE (see fairprune.stage); by hand, give both.
    parser.add_argument("--seed", type=int)
    parser.add_argument("--variant", choices=DENSE_VARIANTS)
    run(main, parser)

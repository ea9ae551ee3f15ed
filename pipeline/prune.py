"""Stage `prune@<method>-<sparsity>-<seed>`: prune the dense model, fine-tune with the mask fixed,
make the mask permanent and record the sparsity actually reached.

`<method>+<arm>` runs one of Tran et al.'s mitigation arms: fair_bf prunes the mitigated dense
model and fine-tunes plainly, fair_aft prunes the plain one and fine-tunes under the constraints,
fair_both does both."""
import argparse

from fairprune import artifacts, models, tracking, training
from fairprune.config import MITIGATED_DENSE_ARMS, MITIGATED_FINETUNE_ARMS, split_arm
from fairprune.errors import ParamsError
from fairprune.data import load_prepared
from fairprune.device import resolve, seed_everything
from fairprune.pruning import PruneContext, get_method, make_permanent, measure_sparsity
from fairprune.pruning.cost import latency_ms, macs_per_image
from fairprune.pruning.structured import count_params
from fairprune.stage import run


def main(params, args, timer):
    if not 0.0 <= args.sparsity < 1.0:
        raise ParamsError("prune.sparsities", args.sparsity, "a fraction in [0, 1)")
    name, arm = split_arm(args.method)
    method = get_method(name)
    method.check(args.sparsity)
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    seed_everything(args.seed)
    start = artifacts.dense_model(args.seed, params.mitigation.variant if arm in MITIGATED_DENSE_ARMS else "plain")
    mitigation = params.mitigation if arm in MITIGATED_FINETUNE_ARMS else None
    model, dense_extra = models.load(start)
    dense_params, dense_macs = count_params(model), macs_per_image(model, data.input_shape)
    key_name = artifacts.pruned_key(args.method, args.sparsity, args.seed)
    key = training.fingerprint("prune", key_name, params.finetune.model_dump(), params.prune.model_dump(),
                               params.mitigation.model_dump() if arm else None)
    checkpoint = artifacts.CHECKPOINT_DIR / f"prune-{key_name}.ckpt"
    previous = training.read_checkpoint(checkpoint, key)
    dvc_stage = f"prune@{args.method}-{artifacts.sparsity_label(args.sparsity)}-{args.seed}"
    with tracking.stage_run(params.base, "prune", dvc_stage,
                            {"prune": params.prune.model_dump(), "finetune": params.finetune.model_dump(),
                             **({"mitigation": params.mitigation.model_dump()} if arm else {})},
                            run_id=previous and previous.get("mlflow_run_id"), method=args.method,
                            arm=arm or "no_mitigation",
                            sparsity=args.sparsity, seed=args.seed) as mlrun:
        def retrain(net, epochs, desc):
            opt = params.finetune.model_copy(update={"epochs": epochs})
            return training.fit(net, data, opt, device, seed=args.seed, desc=desc)

        ctx = PruneContext(data=data, device=device, seed=args.seed,
                           exclude_output_layer=params.prune.exclude_output_layer,
                           options={**params.prune.model_dump(exclude={"methods", "sparsities"}),
                                    "finetune_epochs": params.finetune.epochs},
                           retrain=retrain, rewind_state=dense_extra.get("rewind_state"), log=tracking.log_metrics)
        model = method.prune(model, args.sparsity, ctx)
        at_pruning = size_of(model, method, dense_params, params.prune.exclude_output_layer)
        pruned_s = timer.seconds
        history = training.fit(model, data, params.finetune, device, seed=args.seed, checkpoint=checkpoint,
                               resume_key=key, log=tracking.log_metrics, desc=f"finetune {key_name}",
                               extra_state={"mlflow_run_id": mlrun.info.run_id},
                               before_epoch=lambda e: method.before_finetune_epoch(model, e, params.finetune.epochs),
                               mitigation=mitigation)
        make_permanent(model)
        macs = macs_per_image(model, data.input_shape)
        record = {"method": args.method, "arm": arm or "no_mitigation", "sparsity": args.sparsity, "seed": args.seed,
                  "structured": method.structured,
                  **size_of(model, method, dense_params, params.prune.exclude_output_layer),
                  "sparsity_after_pruning": at_pruning["sparsity_actual"], "params_dense": dense_params,
                  "macs": macs, "macs_dense": dense_macs, "mac_reduction": dense_macs / macs, "prune_s": pruned_s,
                  "final": history[-1] if history else {}}
        if method.structured:
            dense, _ = models.load(start)
            record["latency_ms"] = latency_ms(model, data.input_shape)
            record["latency_dense_ms"] = latency_ms(dense, data.input_shape)
            record["speedup"] = record["latency_dense_ms"] / record["latency_ms"]
        record["wall_s"] = timer.seconds
        models.save(model, artifacts.pruned_model(args.method, args.sparsity, args.seed), record=record)
        tracking.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float))})
        tracking.log_model(model)
        artifacts.write_json(artifacts.prune_metrics(args.method, args.sparsity, args.seed), record)
    checkpoint.unlink(missing_ok=True)
    print(f"{key_name}: sparsity {record['sparsity_actual']:.4f} ({record['params_nonzero']} nonzero of "
          f"{record['params_total']} parameters) in {timer.seconds:.1f}s")


def size_of(model, method, dense_params: int, exclude_output_layer: bool) -> dict:
    """Unstructured: fraction of zero weights in the prunable layers; structured: of parameters removed."""
    size = measure_sparsity(model, exclude_output_layer)
    if method.structured:
        size["sparsity_actual"] = 1 - size["params_total"] / dense_params
    return size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    run(main, parser)

"""Stage `prune@<method>-<sparsity>-<seed>`: prune the dense model, fine-tune with the mask fixed,
make the mask permanent and record the sparsity actually reached.

`<method>+<arm>` runs one of Tran et al.'s mitigation arms (see fairprune.pruning.finetune)."""
import argparse

from fairprune import artifacts, models, tracking, training
from fairprune.config import arm_label, split_arm
from fairprune.data import load_prepared
from fairprune.device import resolve, seed_everything
from fairprune.errors import ParamsError
from fairprune.pruning import get_method, make_permanent
from fairprune.pruning.cost import macs_per_image, paired_latency_ms
from fairprune.pruning.finetune import method_params, prune_and_finetune, size_of, start_checkpoint
from fairprune.stage import fill_matrix_args, run


def main(params, args, timer):
    fill_matrix_args(args, "prune", {"method": params.prune.methods, "sparsity": params.prune.sparsities,
                                     "seed": params.base.seeds})
    if not 0.0 <= args.sparsity < 1.0:
        raise ParamsError("prune.sparsities", args.sparsity, "a fraction in [0, 1)")
    name, arm = split_arm(args.method)
    get_method(name).check(args.sparsity)  # before the data loads
    device = resolve(params.base.device)
    data = load_prepared(artifacts.PREPARED)
    seed_everything(args.seed)
    start = start_checkpoint(params, args.method, args.seed)
    dense_macs = macs_per_image(models.load(start)[0], data.input_shape)
    key_name = artifacts.pruned_key(args.method, args.sparsity, args.seed)
    own_params = method_params(params, args.method)
    key = training.stage_fingerprint("prune", key_name, own_params, inputs=[start, artifacts.PREPARED])
    checkpoint = artifacts.CHECKPOINT_DIR / f"prune-{key_name}.ckpt"
    previous = training.read_checkpoint(checkpoint, key)
    dvc_stage = f"prune@{args.method}-{artifacts.sparsity_label(args.sparsity)}-{args.seed}"
    pruned_at = {}
    with tracking.stage_run(params.base, "prune", dvc_stage, {k: v for k, v in own_params.items() if k != "method"},
                            run_id=previous and previous.get("mlflow_run_id"), system_metrics=True,
                            method=args.method,
                            arm=arm_label(args.method),
                            sparsity=args.sparsity, seed=args.seed) as mlrun:
        tracking.log_dataset(data, artifacts.PREPARED, "training")
        result = prune_and_finetune(params, args.method, args.sparsity, args.seed, data, device,
                                    log=tracking.log_metrics, checkpoint=checkpoint, resume_key=key,
                                    extra_state={"mlflow_run_id": mlrun.info.run_id},
                                    after_pruning=lambda: pruned_at.update(seconds=timer.seconds))
        model, method, history = result.model, result.method, result.history
        make_permanent(model)
        macs = macs_per_image(model, data.input_shape)
        record = {"method": args.method, "arm": arm_label(args.method), "sparsity": args.sparsity, "seed": args.seed,
                  "structured": method.structured,
                  **size_of(model, method.structured, result.dense_params, params.prune.exclude_output_layer),
                  "sparsity_after_pruning": result.at_pruning["sparsity_actual"],
                  "params_dense": result.dense_params, "macs": macs, "macs_dense": dense_macs,
                  "mac_reduction": dense_macs / macs, "prune_s": pruned_at["seconds"],
                  "final": history[-1] if history else {}, "history": history}
        if method.structured:
            dense, _ = models.load(start)
            (record["latency_dense_ms"], record["latency_ms"]), ratios = paired_latency_ms([dense, model],
                                                                                          data.input_shape)
            record["speedup"] = 1 / ratios[1]
        record["wall_s"] = timer.seconds
        tracking.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float))})
        record["mlflow_model_id"] = tracking.log_model(model, name=key_name)
        models.save(model, artifacts.pruned_model(args.method, args.sparsity, args.seed), record=record)
        artifacts.write_curve(artifacts.prune_curve(args.method, args.sparsity, args.seed), history)
        artifacts.write_json(artifacts.prune_metrics(args.method, args.sparsity, args.seed), record)
    checkpoint.unlink(missing_ok=True)
    print(f"{key_name}: sparsity {record['sparsity_actual']:.4f} ({record['params_nonzero']} nonzero of "
          f"{record['params_total']} parameters) in {timer.seconds:.1f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    # Under DVC these come from DVC_STAGE (see fairprune.stage); by hand, give all three.
    parser.add_argument("--method")
    parser.add_argument("--sparsity", type=float)
    parser.add_argument("--seed", type=int)
    run(main, parser)

"""The params.yaml schema: the single source of defaults, types and allowed values.

Every stage validates the whole file before it writes anything, so a typo stops the
pipeline at its first stage with one message naming the dotted key, the bad value and
what is allowed.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairprune.errors import ParamsError

DATASETS = ("digits", "utkface", "celeba", "cifar10", "mnist", "manifest")
ARCHS = ("small_cnn", "resnet10", "resnet18", "mobilenet_v2")

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
UTKFACE_ATTRIBUTES = ("race", "gender", "age")
# Which target / group attributes each dataset understands (None: fixed by the file format).
DATASET_ATTRIBUTES: dict[str, tuple[str, ...] | None] = {
    "digits": ("class",),
    "cifar10": ("class",),
    "mnist": ("class",),
    "utkface": UTKFACE_ATTRIBUTES,
    "celeba": CELEBA_ATTRIBUTES,
    "manifest": None,
}
DATASET_DEFAULTS = {
    "digits": ("class", "class"),
    "cifar10": ("class", "class"),
    "mnist": ("class", "class"),
    "utkface": ("gender", "race"),
    "celeba": ("Blond_Hair", "Male"),
    "manifest": ("target", "group"),
}
NEEDS_ROOT = ("utkface", "celeba", "manifest", "cifar10", "mnist")


class _Section(BaseModel):
    # strict: `epochs: "10"` or `hflip: "yes"` is an error, not silently coerced
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class BaseParams(_Section):
    seeds: list[int] = Field(default=[0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    experiment: str = Field(default="fairprune", min_length=1)
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlruns"
    threads: int | None = Field(default=None, ge=1)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        for i, seed in enumerate(seeds):
            if not 0 <= seed < 2 ** 32:
                raise ParamsError(f"base.seeds.{i}", seed, "a seed in [0, 2^32), e.g. 0")
        return seeds


class ImbalanceParams(_Section):
    groups: list[str] = []
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)


class DataParams(_Section):
    dataset: Literal["digits", "utkface", "celeba", "cifar10", "mnist", "manifest"] = "digits"
    root: str | None = None
    image_root: str | None = None  # manifest only: the folder its image paths are relative to (and confined in); null: the CSV's
    target: str | None = None
    group: str | list[str] | None = None  # a list: intersectional groups (race x gender -> 'White/female')
    image_size: int | None = Field(default=None, ge=4, le=512)
    val_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    split_seed: int = 0
    max_samples: int | None = Field(default=None, ge=10)
    age_bins: list[int] = Field(default=[20, 40, 60], min_length=1)
    imbalance: ImbalanceParams = ImbalanceParams()
    download: bool = False

    @field_validator("imbalance", mode="before")
    @classmethod
    def _no_imbalance(cls, value):
        return ImbalanceParams() if value is None else value  # `imbalance: null` means none

    @field_validator("age_bins")
    @classmethod
    def _increasing(cls, bins: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(bins, bins[1:])) or bins[0] <= 0:
            raise ValueError("age_bins must be positive and strictly increasing, e.g. [20, 40, 60]")
        return bins

    @model_validator(mode="after")
    def _attributes_exist(self) -> "DataParams":
        allowed = DATASET_ATTRIBUTES[self.dataset]
        default_target, default_group = DATASET_DEFAULTS[self.dataset]
        if self.target is None:
            self.target = default_target
        if self.group is None:
            self.group = default_group
        if isinstance(self.group, list) and (not self.group or len(set(self.group)) != len(self.group)):
            raise ParamsError("data.group", self.group, "one attribute, or a list of distinct attributes")
        if allowed is not None:
            for key, value in [("target", self.target)] + [("group", g) for g in
                                                          ([self.group] if isinstance(self.group, str) else self.group)]:
                if value not in allowed:
                    raise ParamsError(
                        f"data.{key}", value, f"one of the {self.dataset} attributes: {', '.join(allowed)}"
                    )
        if self.dataset in NEEDS_ROOT and not self.root:
            hint = {
                "utkface": "the path of UTKFace.tar.gz or of its extracted UTKFace/ folder",
                "celeba": "the folder holding img_align_celeba.zip (or img_align_celeba/) and list_attr_celeba.txt",
                "manifest": "the path of a CSV with columns path,target,group[,split]",
                "cifar10": "a folder for torchvision's copy (set data.download: true to fetch it)",
                "mnist": "a folder for torchvision's copy (set data.download: true to fetch it)",
            }[self.dataset]
            raise ParamsError("data.root", self.root, hint)
        return self


class ModelParams(_Section):
    arch: Literal["small_cnn", "resnet10", "resnet18", "mobilenet_v2"] = "small_cnn"


BATCHNORM_ARCHS = ("resnet10", "resnet18", "mobilenet_v2")


class OptimParams(_Section):
    epochs: int = Field(default=30, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    hflip: bool = False


DENSE_VARIANTS = ("plain", "relaxed", "full", "full_literal")
# Tran et al.'s arms, appended to a pruning method as `<method>+<arm>`; the bare name is "No mitigation".
ARMS = ("fair_bf", "fair_aft", "fair_both")
MITIGATED_DENSE_ARMS = ("fair_bf", "fair_both")  # prune the mitigated dense model
MITIGATED_FINETUNE_ARMS = ("fair_aft", "fair_both")  # fine-tune under the constraints


def split_arm(method: str) -> tuple[str, str]:
    """'magnitude+fair_aft' -> ('magnitude', 'fair_aft'); a bare method has the arm ''."""
    name, _, arm = method.partition("+")
    return name, arm


def arm_label(method: str) -> str:
    """What MLflow and the records call a model's arm: its fair fine-tuning arm ('fair_aft'; a dense model's
    mitigated variant, 'relaxed'), 'fair_method' for a method fair by itself, else 'no_mitigation'."""
    name, arm = split_arm(method)
    return arm or ("fair_method" if name in FAIR_PRUNING_METHODS else "no_mitigation")


class TrainParams(OptimParams):
    epochs: int = Field(default=30, ge=1)  # a dense model needs at least one epoch (fine-tuning may have 0)
    rewind_epoch: int = Field(default=1, ge=0)  # the early iterate Lottery-Ticket IMP rewinds to (0 = init)
    # Dense models to train per seed: plain ERM, or constrained with the relaxed / full mitigation.
    variants: list[Literal["plain", "relaxed", "full", "full_literal"]] = Field(default=["plain"], min_length=1)

    @field_validator("variants")
    @classmethod
    def _plain_first(cls, values: list[str]) -> list[str]:
        if values[0] != "plain" or len(set(values)) != len(values):
            raise ValueError("variants must start with 'plain' (pruning starts from it) and not repeat")
        return values


class MitigationParams(_Section):
    """Tran et al.'s constrained training (Eq. 8 relaxed, Eq. 7 full), solved with cooper."""

    # relaxed: equal group losses (Eq. 8); full: also equal per-sample gradient norms and distances to
    # the decision boundary, each group's mean against the population's (feasible; docs/methods.md);
    # full_literal: Eq. 7 as written (group gradient norms and Hessian eigenvalues; infeasible)
    variant: Literal["relaxed", "full", "full_literal"] = "relaxed"
    dual_lr: float = Field(default=1e-3, gt=0.0)  # the paper's Lagrangian step size
    dual_optimizer: Literal["sgd", "adam"] = "sgd"
    tolerance: float = Field(default=0.0, ge=0.0)  # 0: equality constraints; > 0: |violation| <= tolerance
    grad_norm_every: int = Field(default=1, ge=1)  # full_literal only: steps between gradient-norm constraints
    hessian_every: int = Field(default=10, ge=1)  # full_literal only: steps between Hessian-eigenvalue constraints
    hessian_iterations: int = Field(default=3, ge=1)  # warm-started power steps per refresh
    # full_literal only: what each group's gradient norm and Hessian eigenvalue must equal. population: the
    # population's (Eq. 7 as written; jointly infeasible wherever group gradients disagree);
    # group_mean: the size-weighted mean of the groups' values (feasible, like the loss constraint)
    reference: Literal["population", "group_mean"] = "population"
    max_grad_norm: float | None = Field(default=None, gt=0.0)  # clip the primal gradient (the Lagrangian's); null = off
    log_every: int = Field(default=10, ge=1)  # steps between MLflow records of multipliers and violations
    # full: allowed |relative gap| of a group's mean per-sample gradient norm / boundary closeness
    full_tolerance: float = Field(default=0.05, ge=0.0)


class DiagnoseParams(_Section):
    """Tran et al.'s per-group diagnostics (gradient norm, Hessian top eigenvalue, boundary distance)."""

    split: Literal["train", "val", "test"] = "train"
    per_group: int = Field(default=256, ge=1)  # samples per group (seeded)
    iterations: int = Field(default=20, ge=1)  # at most this many power iterations per Hessian top eigenvalue
    tolerance: float = Field(default=1e-3, ge=0.0)  # fewer once the estimate moves by at most this fraction
    batch_size: int = Field(default=256, ge=1)
    seed: int = 0


class FinetuneParams(OptimParams):
    epochs: int = Field(default=10, ge=0)
    lr: float = Field(default=0.01, gt=0.0)


class BifpParams(_Section):
    """BiFP (bi-level fair pruning, docs/bifp.md): mask scores and weights trained together
    during the fine-tuning epochs."""

    inner_steps: int = Field(default=1, ge=1)  # K weight steps (mask fixed) per score step (weights fixed)
    lambda_w: float = Field(default=1.0, ge=0.0)  # fairness weight in the weights' (lower-level) loss
    lambda_m: float = Field(default=1.0, ge=0.0)  # fairness weight in the scores' (upper-level) loss
    ig_scale: float = Field(default=1.0, ge=0.0)  # 1/gamma of BiP's implicit-gradient correction; 0 = off
    score_lr: float = Field(default=1e-3, gt=0.0)  # Adam on the mask scores
    # The last fine-tuning epochs train the weights only, on the mask the scores reached, so the
    # final mask is not one the weights (their learning rate decayed to 0) never adapted to.
    mask_freeze_epochs: int = Field(default=0, ge=0)
    score_init: Literal["magnitude", "random"] = "magnitude"  # magnitude: the first mask is magnitude pruning's
    # stand-in u for the 0/1 indicator. sigmoid (bounded: a soft accuracy gap) by default: the convex logistic
    # makes the penalty a mean margin that confident samples dominate, and collapsed the model on two face sets
    surrogate: Literal["logistic", "hinge", "linear", "sigmoid"] = "sigmoid"
    tolerance: float = Field(default=0.02, ge=0.0)  # bifp_lagrangian: allowed excess of a group's surrogate error
    dual_lr: float = Field(default=0.01, gt=0.0)  # bifp_lagrangian: multiplier step size
    # bifp_lagrangian: the split whose batches measure the violations the multipliers ascend on.
    # val: held-out data (Cotter et al. 2019), since fitted training data shows no violation
    dual_split: Literal["train", "val"] = "train"
    # stop with a message when a class with validation samples is no longer predicted after an epoch
    collapse_check: bool = True


class CeagParams(_Section):
    """CEAG (Hashemizadeh et al. 2024): psi_a = (acc_a^dense - acc_a) - (acc^dense - acc) <= tolerance per group."""

    tolerance: float = Field(default=0.01, ge=0.0)  # epsilon: allowed excess accuracy drop of a group
    buffer: int = Field(default=40, ge=1)  # per-group replay buffer of the last samples' correctness (authors: 40)
    dual_lr: float = Field(default=0.01, gt=0.0)  # multiplier step size (dual ascent on the buffered violations)
    dual_optimizer: Literal["sgd", "adam"] = "sgd"
    gmp_fraction: float = Field(default=0.25, gt=0.0, le=1.0)  # ceag_gmp: epochs of gradual pruning before the constraints
    max_grad_norm: float | None = Field(default=None, gt=0.0)  # clip the primal (Lagrangian) gradient; null = off
    log_every: int = Field(default=10, ge=1)  # steps between MLflow records of multipliers and violations


class FairgrapeParams(_Section):
    """FairGRAPE (Lin et al. 2022): per-group importance, greedy per-layer selection, iterative rounds."""

    keep_per_round: float = Field(default=0.8, gt=0.0, lt=1.0)  # fraction of the remaining weights each round keeps
    retrain_epochs: int = Field(default=1, ge=0)  # plain training between rounds
    batch_size: int = Field(default=128, ge=1)  # single-group batches the importance is summed over
    para_batch: int = Field(default=1, ge=1)  # weights a group adds before the choice is made again (1 = per weight)


class PruneParams(_Section):
    methods: list[str] = Field(default=["magnitude"], min_length=1)
    sparsities: list[float] = Field(default=[0.5, 0.7, 0.8, 0.9, 0.95], min_length=1)
    exclude_output_layer: bool = True
    score_batches: int = Field(default=4, ge=1)  # batches that data-driven scores (SNIP, GraSP) average over
    score_batch_size: int = Field(default=128, ge=1)
    grasp_temperature: float = Field(default=200.0, gt=0.0)
    synflow_rounds: int = Field(default=100, ge=1)
    imp_round_epochs: int = Field(default=2, ge=0)  # retraining epochs after each 20 % IMP round
    bifp: BifpParams = BifpParams()
    ceag: CeagParams = CeagParams()
    fairgrape: FairgrapeParams = FairgrapeParams()

    @field_validator("sparsities")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        for i, value in enumerate(values):
            if not 0.0 <= value < 1.0:
                raise ParamsError(f"prune.sparsities.{i}", value, "a fraction in [0, 1), e.g. 0.9")
            if value in values[:i]:
                raise ParamsError(f"prune.sparsities.{i}", value, "distinct sparsities (this one is listed twice)")
        return values

    @field_validator("methods")
    @classmethod
    def _registered(cls, values: list[str]) -> list[str]:
        from fairprune.pruning import available_methods, get_method

        known = available_methods()
        for i, value in enumerate(values):
            method, arm = split_arm(value)
            if method not in known:
                raise ParamsError(f"prune.methods.{i}", value, f"one of: {', '.join(known)}, optionally "
                                  f"followed by +{' / +'.join(ARMS)}")
            if arm and arm not in ARMS:
                raise ParamsError(f"prune.methods.{i}", value, f"a mitigation arm after '+': one of {', '.join(ARMS)}")
            if arm in MITIGATED_FINETUNE_ARMS and get_method(method).owns_finetuning:
                raise ParamsError(f"prune.methods.{i}", value,
                                  f"'{method}' or '{method}+fair_bf': {method} fine-tunes under its own fairness "
                                  "objective, so a constrained fine-tuning arm would be ignored")
        if len(set(values)) != len(values):
            raise ValueError("methods must not repeat")
        return values


class EvaluateParams(_Section):
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = Field(default=512, ge=1)


class ReportParams(_Section):
    reference: Literal["tran_table2"] | None = None  # a paper's numbers to print next to ours
    claims_sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)  # BiFP claims; null: the sparsity nearest 0.7
    target_gap: float | None = Field(default=None, ge=0.0)  # efficiency target (validation); null: the dense model's gap
    target_accuracy_drop: float = Field(default=0.01, ge=0.0)  # efficiency target: within this of dense accuracy
    # Model Registry alias `champion`: the most accurate pruned model whose accuracy gap's 95 % upper bound
    # (evaluation split) is at most this; null: the dense model's gap
    champion_gap: float | None = Field(default=None, ge=0.0)


TUNABLE_SECTIONS = ("finetune", "mitigation", "prune")  # what a trial may change without retraining the dense model
FIXED_KEYS = ("prune.methods", "prune.sparsities")
# methods fair by themselves, tunable without an arm
FAIR_PRUNING_METHODS = ("bifp_uns", "bifp_str", "bifp_lagrangian", "ceag", "ceag_gmp", "equal_loss_buffer", "fairgrape")


class SearchRange(_Section):
    """One searched parameter: a float or integer range (log-uniform with `log`), or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[str | float | int | bool] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchRange":
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty `choices` list or `low` and `high`, not both")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs low < high (or a `choices` list)")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


def _default_search() -> dict[str, SearchRange]:
    return {"mitigation.dual_lr": SearchRange(low=1e-4, high=0.3, log=True),
            "mitigation.tolerance": SearchRange(low=0.0, high=0.05),
            "finetune.lr": SearchRange(low=2e-3, high=5e-2, log=True)}


class TuneParams(_Section):
    """Optuna search over a fair method's fairness-related parameters (validation split only)."""

    method: str = "magnitude+fair_aft"  # a method whose fine-tuning is fair (+fair_aft / +fair_both)
    sparsity: float = Field(default=0.9, ge=0.0, lt=1.0)
    seed: int = 0  # the dense model each trial starts from (one of base.seeds)
    trials: int = Field(default=8, ge=1)  # in the whole study, over all workers and restarts
    workers: int = Field(default=1, ge=1)  # processes on this machine; FAIRPRUNE_TUNE_WORKERS wins
    study: str | None = None  # null: named from the method, sparsity and a hash of the search
    storage: str | None = None  # null: sqlite at <project>/tune/optuna.db; FAIRPRUNE_TUNE_STORAGE wins
    gap: Literal["accuracy_gap", "excess_loss_gap", "degradation_gap", "worst_excess_drop",
                 "demographic_parity_gap", "equalized_odds_gap"] = "accuracy_gap"
    gap_budget: float | None = Field(default=None, gt=0.0)  # hard constraint gap <= budget (trial.set_constraint)
    max_accuracy_drop: float = Field(default=0.01, ge=0.0)  # choice rule without a budget (see README)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    sampler_seed: int = 0
    epochs: int | None = Field(default=None, ge=1)  # fine-tuning epochs per trial; null: finetune.epochs
    heartbeat_s: int = Field(default=10, ge=1)  # a trial silent for grace_s is stale and retried
    grace_s: int = Field(default=30, ge=2)
    search: dict[str, SearchRange] = Field(default_factory=_default_search, min_length=1)

    @field_validator("method")
    @classmethod
    def _fair_method(cls, value: str) -> str:
        from fairprune.pruning import available_methods

        name, arm = split_arm(value)
        if value not in FAIR_PRUNING_METHODS and (name not in available_methods() or arm not in MITIGATED_FINETUNE_ARMS):
            raise ParamsError("tune.method", value, "a pruning method with a fair fine-tuning arm, e.g. "
                              f"magnitude+fair_aft (arms: {', '.join(MITIGATED_FINETUNE_ARMS)}), or one of "
                              f"{', '.join(FAIR_PRUNING_METHODS)}")
        return value

    @field_validator("search")
    @classmethod
    def _tunable_keys(cls, search: dict[str, SearchRange]) -> dict[str, SearchRange]:
        for key in search:
            _check_tunable_key(f"tune.search.{key}", key)
        return search


def _check_tunable_key(where: str, key: str) -> None:
    """`key` must name a setting that prune + fine-tune from a trained dense model can change."""
    sections = {"finetune": FinetuneParams, "mitigation": MitigationParams, "prune": PruneParams}
    section, *path = key.split(".")
    model = sections.get(section) if section in TUNABLE_SECTIONS else None
    for part in path[:-1]:  # nested settings such as prune.bifp.lambda_w
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None or not path or path[-1] not in model.model_fields or key in FIXED_KEYS:
        raise ParamsError(where, key, "a dotted key of a section a trial can change "
                          f"({', '.join(TUNABLE_SECTIONS)}), e.g. mitigation.dual_lr; not "
                          f"{' or '.join(FIXED_KEYS)}")


class TradeoffSweep(_Section):
    keys: list[str] = Field(min_length=1)  # dotted keys, all set to each value in turn (e.g. lambda_w and lambda_m)
    values: list[float | int | str | bool] = Field(min_length=1)


class TradeoffParams(_Section):
    """BiFP Figure 5: accuracy versus fairness at one sparsity, each method swept along its fairness knob."""

    sparsity: float = Field(default=0.7, ge=0.0, lt=1.0)
    sweeps: dict[str, TradeoffSweep] = {}  # method -> sweep; empty: the stage has nothing to do

    @field_validator("sweeps")
    @classmethod
    def _sweepable(cls, sweeps: dict[str, TradeoffSweep]) -> dict[str, TradeoffSweep]:
        from fairprune.pruning import available_methods, get_method

        for method, sweep in sweeps.items():
            name, arm = split_arm(method)
            owns = name in available_methods() and get_method(name).owns_finetuning
            if name not in available_methods() or arm not in ("", "fair_aft") or (arm and owns):
                raise ParamsError(f"tradeoff.sweeps.{method}", method, "a pruning method, or a non-BiFP one with "
                                  "+fair_aft: a sweep fine-tunes from the plain dense models (it cannot retrain the "
                                  "mitigated one) and BiFP brings its own fairness objective")
            for key in sweep.keys:
                _check_tunable_key(f"tradeoff.sweeps.{method}.keys", key)
        return sweeps


class RunParams(_Section):
    """Stages as Ray tasks (`python -m fairprune.parallel`, `make run-parallel`): what each one asks of a node."""

    cpus_per_stage: float = Field(default=1.0, gt=0.0)  # Ray CPUs per stage (also its torch threads, rounded up)
    gpus_per_stage: float = Field(default=0.0, ge=0.0)  # Ray GPUs per stage; a fraction packs stages on one GPU
    address: str | None = None  # an existing Ray cluster (RAY_ADDRESS wins); null: a local Ray instance
    max_retries: int = Field(default=3, ge=0)  # re-runs of a stage whose worker or node died (not of a failure)


class Params(_Section):
    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    prune: PruneParams = PruneParams()
    finetune: FinetuneParams = FinetuneParams()
    mitigation: MitigationParams = MitigationParams()
    evaluate: EvaluateParams = EvaluateParams()
    diagnose: DiagnoseParams = DiagnoseParams()
    report: ReportParams = ReportParams()
    tune: TuneParams = TuneParams()
    tradeoff: TradeoffParams = TradeoffParams()
    run: RunParams = RunParams()

    @model_validator(mode="after")
    def _fair_dense_is_trained(self) -> "Params":
        needs = [m for m in self.prune.methods if split_arm(m)[1] in MITIGATED_DENSE_ARMS]
        if needs and self.mitigation.variant not in self.train.variants:
            raise ParamsError("train.variants", self.train.variants,
                              f"a list including '{self.mitigation.variant}' (mitigation.variant): "
                              f"{needs[0]} prunes the mitigated dense model")
        if self.tune.seed not in self.base.seeds:
            raise ParamsError("tune.seed", self.tune.seed, f"one of base.seeds {self.base.seeds} (its dense model "
                              f"is what every trial starts from)")
        _check_search_values(self)
        fair_arms = [split_arm(m)[1] for m in [*self.prune.methods, self.tune.method]]
        uses_full = "full_literal" in self.train.variants or (self.mitigation.variant == "full_literal"
                                                               and any(fair_arms))
        if uses_full and self.model.arch in BATCHNORM_ARCHS:
            raise ParamsError("model.arch", self.model.arch,
                              "a model without BatchNorm (small_cnn) for the full_literal mitigation: its Hessian-eigenvalue "
                              "constraints need third-order derivatives, which PyTorch's BatchNorm does not have; "
                              "or keep this model and use the relaxed or full variant (train.variants, mitigation.variant)")
        if split_arm(self.tune.method)[1] in MITIGATED_DENSE_ARMS and self.mitigation.variant not in self.train.variants:
            raise ParamsError("train.variants", self.train.variants,
                              f"a list including '{self.mitigation.variant}': tune.method {self.tune.method} "
                              f"prunes the mitigated dense model")
        return self


def _check_search_values(params: Params) -> None:
    """Every end of a searched range, every choice and every swept value must be valid for its key."""
    for key, space in params.tune.search.items():
        candidates = space.choices if space.choices is not None else [space.low, space.high]
        for value in candidates:
            _check_value(params, f"tune.search.{key}", key, value)
    for method, sweep in params.tradeoff.sweeps.items():
        for key in sweep.keys:
            for value in sweep.values:
                _check_value(params, f"tradeoff.sweeps.{method}.values", key, value)


def _check_value(params: Params, where: str, key: str, value) -> None:
    section, *path = key.split(".")
    current = getattr(params, section)
    for part in path[:-1]:
        current = getattr(current, part)
    try:
        type(current).model_validate({**current.model_dump(), path[-1]: value})
    except ValidationError as exc:
        raise ParamsError(where, value, f"a value {key} accepts: {exc.errors()[0]['msg']}") from None
    except ParamsError as exc:
        raise ParamsError(where, value, f"a value {key} accepts: {exc}") from None


def _describe(error: dict[str, Any], section_fields: dict[str, list[str]]) -> ParamsError:
    loc = ".".join(str(part) for part in error["loc"])
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in error["loc"][:-1])
        allowed = section_fields.get(parent, [])
        where = f"'{parent}'" if parent else "the top level"
        return ParamsError(loc, value, f"a known key; unknown key in {where}, allowed: {', '.join(allowed)}")
    if error["type"] == "missing":
        return ParamsError(loc, None, "a value (this key is required)")
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), ParamsError):
        return ctx["error"]
    return ParamsError(loc, value, error["msg"].removeprefix("Value error, "))


def _section_fields() -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {"": list(Params.model_fields)}
    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                fields[path] = list(annotation.model_fields)
                walk(annotation, path)
    walk(Params, "")
    return fields


def validate(raw: Any) -> Params:
    """Validate a params mapping; raise ParamsError describing the first problem."""
    if raw is None:
        raise ParamsError("(top level)", "an empty file", "a params file with at least one section, e.g. "
                          "`git checkout params.yaml` for the shipped one")
    if not isinstance(raw, dict):
        raise ParamsError("(top level)", type(raw).__name__, "a mapping of sections: " + ", ".join(Params.model_fields))
    try:
        return Params.model_validate(raw)
    except ParamsError:
        raise
    except ValidationError as exc:
        raise _describe(exc.errors()[0], _section_fields()) from None


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError("(file)", str(path), "an existing params.yaml; run the stage from the project root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError("(file)", str(path), f"valid YAML ({exc})") from None
    return validate(raw)


def _round_trip_yaml():
    from ruamel.yaml import YAML  # keeps the comments of params.yaml

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # an inline list stays on one line
    yaml_rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml_rt


def _styled_like(old, new):
    """A list replacing an inline `[a, b]  # comment` list stays inline, so the comment stays on its line."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(old, CommentedSeq) and old.fa.flow_style() and isinstance(new, list):
        seq = CommentedSeq(new)
        seq.fa.set_flow_style()
        return seq
    return new


REPLACED_WHOLE = {("tune", "search")}  # a search space is one choice: a configuration's replaces the base's


def merge_into(base, override: dict, path: tuple[str, ...] = ()) -> None:
    """Deep-merge `override` into the mapping `base` in place; an empty mapping replaces (`sweeps: {}`),
    and so does any mapping at a path in REPLACED_WHOLE (`tune.search`)."""
    for key, value in override.items():
        where = (*path, key)
        if isinstance(value, dict) and value and isinstance(base.get(key), dict) and where not in REPLACED_WHOLE:
            merge_into(base[key], value, where)
        else:
            base[key] = _styled_like(base.get(key), value)


def nested_override(values: dict[str, Any]) -> dict[str, Any]:
    """{'prune.bifp.lambda_w': 1.0} -> {'prune': {'bifp': {'lambda_w': 1.0}}}, for merge_into."""
    override: dict[str, Any] = {}
    for key, value in values.items():
        *parents, name = key.split(".")
        node = override
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return override


def lottery_series(rounds: int) -> list[float]:
    """Sparsities 1 - 0.8^n, n = 1..rounds (the Lottery-Ticket series), to 4 decimals."""
    return [round(1 - 0.8 ** n, 4) for n in range(1, rounds + 1)]


def _write_round_trip(target: Path, data) -> None:
    tmp = target.with_suffix(".yaml.tmp")
    with open(tmp, "w") as handle:
        _round_trip_yaml().dump(data, handle)
    tmp.replace(target)


def apply_override(target: Path, override: Path):
    """params.yaml with a named configuration merged in (comments kept), validated."""
    if not override.exists():
        raise ParamsError("(file)", str(override), "an existing configuration file, e.g. one in configs/")
    try:
        values = yaml.safe_load(override.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError("(file)", str(override), f"valid YAML ({exc})".replace("\n", " ")) from None
    if values is not None and not isinstance(values, dict):
        raise ParamsError("(file)", str(override), f"a mapping of params sections, not a {type(values).__name__}")
    return apply_values(target, values or {})


def apply_values(target: Path, values: dict):
    base = _round_trip_yaml().load(target.read_text()) if target.exists() else {}
    merge_into(base, values)
    text = io.StringIO()
    _round_trip_yaml().dump(base, text)
    validate(yaml.safe_load(text.getvalue()))
    return base


def run_section(path: str | Path) -> RunParams:
    """The `run` section of a params file, validated on its own (fairprune.parallel needs it first)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError("(file)", str(path), f"a readable params file ({exc})") from None
    try:
        return RunParams.model_validate((raw.get("run") if isinstance(raw, dict) else None) or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise _describe({**error, "loc": ("run", *error["loc"])}, _section_fields()) from None


def check_paths(params: "Params") -> None:
    """The files params name exist (checked by `fairprune-params check` and the validate stage, before
    prepare decodes anything or DVC deletes its outputs); relative paths are the project root's."""
    data = params.data
    if data.dataset in NEEDS_ROOT and not data.download and not Path(data.root).exists():
        raise ParamsError("data.root", data.root, f"an existing path (not found from {Path.cwd()}); "
                          f"see docs/datasets.md for what {data.dataset} needs")
    if data.image_root and not Path(data.image_root).is_dir():
        raise ParamsError("data.image_root", data.image_root, "an existing folder, or null for the CSV's own")


def main(argv: list[str] | None = None) -> int:
    """`fairprune-params check [FILE]` or `fairprune-params apply OVERRIDE [--into params.yaml]`."""
    parser = argparse.ArgumentParser(prog="fairprune-params", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a params file")
    check.add_argument("file", nargs="?", default="params.yaml")
    apply = sub.add_parser("apply", help="merge a named configuration into params.yaml (validated first)")
    apply.add_argument("override")
    apply.add_argument("--into", default="params.yaml")
    series = sub.add_parser("lottery-series", help="set prune.sparsities to 1 - 0.8^n for n = 1..N")
    series.add_argument("rounds", type=int)
    series.add_argument("--into", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        if args.command == "lottery-series":
            if args.rounds < 1:
                raise ParamsError("rounds", args.rounds, "a positive number of 20 % rounds")
            values = lottery_series(args.rounds)
            target = Path(args.into)
            merged = apply_values(target, {"prune": {"sparsities": values}})
            _write_round_trip(target, merged)
            print(f"prune.sparsities = {values}")
            return 0
        if args.command == "check":
            check_paths(load(args.file))
            print(f"{args.file}: ok")
            return 0
        target = Path(args.into)
        merged = apply_override(target, Path(args.override))
        _write_round_trip(target, merged)
        print(f"applied {args.override} to {target}")
        return 0
    except (ParamsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

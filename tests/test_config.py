import pytest

from fairprune import config
from fairprune.errors import ParamsError


def error_for(raw) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        config.validate(raw)
    return info.value


def test_defaults_are_valid():
    params = config.validate({})
    assert params.data.dataset == "digits" and params.data.group == "class"


def test_unknown_key_names_dotted_path_and_allowed_keys():
    err = error_for({"train": {"epoch": 3}})
    assert err.key == "train.epoch"
    assert "epochs" in str(err) and "unknown key in 'train'" in str(err)


def test_unknown_section():
    err = error_for({"trian": {}})
    assert err.key == "trian" and "train" in err.allowed


def test_wrong_type():
    err = error_for({"train": {"epochs": "ten"}})
    assert err.key == "train.epochs" and err.value == "ten" and "integer" in err.allowed


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_sparsity_outside_unit_interval(value):
    err = error_for({"prune": {"sparsities": [0.5, value]}})
    assert err.key == "prune.sparsities.1" and err.value == value and "[0, 1)" in err.allowed


def test_unknown_dataset_model_method():
    assert "digits" in error_for({"data": {"dataset": "imagenet"}}).allowed
    assert error_for({"model": {"arch": "vgg99"}}).key == "model.arch"
    err = error_for({"prune": {"methods": ["magnitude", "oracle"]}})
    assert err.key == "prune.methods.1" and "magnitude" in err.allowed


def test_bifp_refuses_a_constrained_finetuning_arm():
    err = error_for({"prune": {"methods": ["bifp_uns+fair_aft"]}})
    assert err.key == "prune.methods.0" and "bifp_uns+fair_bf" in err.allowed
    assert error_for({"prune": {"methods": ["magnitude", "bifp_str+fair_both"]}}).key == "prune.methods.1"
    config.validate({"prune": {"methods": ["bifp_lagrangian+fair_bf"]}, "train": {"variants": ["plain", "relaxed"]}})


def test_group_attribute_must_exist():
    err = error_for({"data": {"dataset": "celeba", "root": "x", "group": "Hair_Colour"}})
    assert err.key == "data.group" and err.value == "Hair_Colour" and "Male" in err.allowed
    err = error_for({"data": {"dataset": "utkface", "root": "x", "target": "ethnicity"}})
    assert err.key == "data.target" and "race" in err.allowed


def test_full_mitigation_refuses_batchnorm_models():
    err = error_for({"model": {"arch": "resnet18"}, "train": {"variants": ["plain", "full_literal"]}})
    assert err.key == "model.arch" and "small_cnn" in err.allowed and "relaxed" in err.allowed
    err = error_for({"model": {"arch": "resnet18"}, "mitigation": {"variant": "full_literal"},
                     "prune": {"methods": ["magnitude+fair_aft"]}})
    assert err.key == "model.arch"
    config.validate({"model": {"arch": "resnet18"}, "train": {"variants": ["plain", "relaxed"]},
                     "prune": {"methods": ["magnitude+fair_both"]}})


def test_root_required_for_file_datasets():
    err = error_for({"data": {"dataset": "utkface"}})
    assert err.key == "data.root" and "UTKFace.tar.gz" in err.allowed


def test_message_is_one_line_with_key_value_and_allowed():
    message = str(error_for({"evaluate": {"split": "holdout"}}))
    assert "\n" not in message
    assert "'evaluate.split'" in message and "'holdout'" in message and "test" in message


def _apply(tmp_path, params_text: str, override_text: str) -> tuple:
    """Write params.yaml and an override, apply it; returns (params path, override path, exit code)."""
    base, override = tmp_path / "params.yaml", tmp_path / "o.yaml"
    base.write_text(params_text)
    override.write_text(override_text)
    return base, override, config.main(["apply", str(override), "--into", str(base)])


def test_apply_merges_override(tmp_path):
    base, override, code = _apply(tmp_path, "train:\n  epochs: 3\n  lr: 0.1\n", "train:\n  epochs: 5\n")
    assert code == 0
    merged = config.load(base)
    assert merged.train.epochs == 5 and merged.train.lr == 0.1
    override.write_text("train:\n  epochs: -1\n")
    before = base.read_text()
    assert config.main(["apply", str(override), "--into", str(base)]) == 2
    assert base.read_text() == before


def test_apply_keeps_inline_lists_comments_and_nulls(tmp_path):
    base, _, code = _apply(tmp_path, "base:\n  seeds: [0, 1, 2]   # one run per seed\n  threads: 2       # cores\n"
                                     "train:\n  variants: [plain]  # dense models\n",
                           "base:\n  seeds: [0]\n  threads: null\ntrain:\n  variants: [plain, relaxed]\n")
    assert code == 0
    assert base.read_text() == ("base:\n  seeds: [0]         # one run per seed\n  threads: null    # cores\n"
                                "train:\n  variants: [plain, relaxed] # dense models\n")


def test_apply_empty_mapping_clears_it(tmp_path):
    base, _, code = _apply(tmp_path, "tradeoff:\n  sparsity: 0.7\n  sweeps:\n    magnitude+fair_aft: "
                                     "{keys: [mitigation.tolerance], values: [0.0]}\n", "tradeoff:\n  sweeps: {}\n")
    assert code == 0
    assert config.load(base).tradeoff.sweeps == {}
    assert config.load(base).tradeoff.sparsity == 0.7


def test_lottery_series_written_into_params(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text("prune:\n  sparsities: [0.5]  # kept comment\n")
    assert config.main(["lottery-series", "3", "--into", str(target)]) == 0
    assert config.load(target).prune.sparsities == [0.2, 0.36, 0.488]
    assert "kept comment" in target.read_text()


def test_mitigation_arms_are_checked_and_fair_bf_needs_its_dense_variant():
    params = config.validate({"prune": {"methods": ["magnitude", "snip+fair_aft"]}})
    assert params.prune.methods == ["magnitude", "snip+fair_aft"]
    with pytest.raises(ParamsError, match=r"prune\.methods\.0.*fair_bf"):
        config.validate({"prune": {"methods": ["magnitude+fair_later"]}})
    with pytest.raises(ParamsError, match=r"train\.variants.*'relaxed'"):
        config.validate({"prune": {"methods": ["magnitude+fair_bf"]}})
    ok = config.validate({"prune": {"methods": ["magnitude+fair_both"]}, "train": {"variants": ["plain", "relaxed"]}})
    assert ok.mitigation.variant == "relaxed"
    with pytest.raises(ParamsError, match=r"train\.variants"):
        config.validate({"train": {"variants": ["relaxed"]}})


def test_tune_searches_nested_bifp_settings():
    from fairprune.tuning.objective import overrides_of, with_overrides
    from fairprune.tuning.summary import exp_run_command

    raw = {"tune": {"method": "bifp_uns", "search": {"prune.bifp.lambda_w": {"low": 0.0, "high": 2.0},
                                                     "finetune.lr": {"low": 1e-3, "high": 0.1, "log": True}}}}
    params = config.validate(raw)
    nested = overrides_of(params, {"prune.bifp.lambda_w": 0.5, "finetune.lr": 0.02})
    trial = with_overrides(params, nested)
    assert trial.prune.bifp.lambda_w == 0.5 and trial.prune.bifp.lambda_m == 1.0 and trial.finetune.lr == 0.02
    assert "-S prune.bifp.lambda_w=0.5" in exp_run_command(nested)
    assert error_for({"tune": {"search": {"prune.bifp.lambda": {"low": 0, "high": 1}}}}).key == "tune.search.prune.bifp.lambda"
    assert error_for({"tune": {"search": {"prune.bifp.lambda_w": {"low": -1, "high": 1}}}}).key == \
        "tune.search.prune.bifp.lambda_w"
    assert error_for({"tune": {"method": "bifp_no_fair"}}).key == "tune.method"


def test_a_configurations_tune_search_replaces_the_base_search_whole():
    from fairprune.config import merge_into

    base = {"tune": {"search": {"finetune.lr": {"low": 1e-3, "high": 0.1}, "mitigation.tolerance": {"low": 0, "high": 1}},
                     "trials": 16}, "prune": {"bifp": {"lambda_w": 1.0, "lambda_m": 1.0}}}
    merge_into(base, {"tune": {"search": {"mitigation.tolerance": {"low": 0.0, "high": 0.05}}, "trials": 12},
                      "prune": {"bifp": {"lambda_w": 2.0}}})
    assert base["tune"] == {"search": {"mitigation.tolerance": {"low": 0.0, "high": 0.05}}, "trials": 12}
    assert base["prune"]["bifp"] == {"lambda_w": 2.0, "lambda_m": 1.0}  # elsewhere, still a deep merge


@pytest.mark.parametrize("raw, key", [
    ({"train": {"epochs": "10"}}, "train.epochs"),          # strings are not coerced
    ({"train": {"hflip": "yes"}}, "train.hflip"),
    ({"base": {"seeds": [0, 2 ** 32]}}, "base.seeds.1"),     # numpy seeds are 32-bit
    ({"prune": {"sparsities": [0.5, 0.9, 0.5]}}, "prune.sparsities.2"),
    ({"train": {"epochs": 0}}, "train.epochs"),              # an untrained "dense" model
    (None, "(top level)"),                                   # an empty params file is not "ok"
])
def test_params_that_were_silently_accepted_are_refused(raw, key):
    from fairprune.config import validate

    with pytest.raises(ParamsError) as info:
        validate(raw)
    assert info.value.key == key


def test_a_configuration_that_is_not_a_yaml_mapping_is_named(tmp_path):
    from fairprune.config import apply_override

    for text, expected in (("a: [1\n", "valid YAML"), ("- 1\n- 2\n", "a mapping of params sections, not a list")):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ParamsError, match=expected):
            apply_override(tmp_path / "params.yaml", tmp_path / "c.yaml")


def test_imbalance_null_means_none():
    from fairprune.config import validate

    assert validate({"data": {"imbalance": None}}).data.imbalance.groups == []


def test_check_names_a_data_root_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """`fairprune-params check` accepted a missing data.root; the error came only when prepare ran."""
    import yaml

    from fairprune.config import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"data": {"dataset": "utkface", "root": "nowhere/UTKFace.tar.gz",
                                                             "target": "race", "group": "race"}}))
    assert main(["check", "p.yaml"]) == 2
    assert "data.root" in capsys.readouterr().err
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "UTKFace.tar.gz").write_bytes(b"")
    assert main(["check", "p.yaml"]) == 0

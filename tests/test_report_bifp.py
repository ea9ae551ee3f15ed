"""BiFP report: Pareto fronts, the efficiency target, the claim table's paired tests."""
import numpy as np
import pandas as pd

from fairprune import report_bifp


def test_pareto_front_keeps_only_undominated_points():
    points = pd.DataFrame({"acc": [0.9, 0.8, 0.85, 0.7, 0.95], "gap": [0.2, 0.1, 0.25, 0.05, 0.3]})
    front = report_bifp.pareto_front(points, "acc", "gap")
    assert sorted(zip(front.acc, front.gap)) == [(0.7, 0.05), (0.8, 0.1), (0.9, 0.2), (0.95, 0.3)]


def history(*epochs):
    return [{"epoch": i + 1, "steps": 10 * (i + 1), "train_s": float(i + 1), "val_acc": acc,
             "val_acc/a": acc + gap / 2, "val_acc/b": acc - gap / 2} for i, (acc, gap) in enumerate(epochs)]


def test_efficiency_counts_passes_to_the_first_epoch_meeting_both_targets_and_charges_fair_dense_training():
    dense = {(0, "plain"): {"val_acc": 0.9, "val_acc/a": 0.95, "val_acc/b": 0.85},
             (0, "mitigated"): {"steps": 100, "train_s": 50.0}}
    records = [
        {"method": "bifp_uns", "seed": 0, "sparsity": 0.7, "history": history((0.8, 0.05), (0.895, 0.2), (0.9, 0.08))},
        {"method": "magnitude+fair_bf", "seed": 0, "sparsity": 0.7, "history": history((0.9, 0.05))},
        {"method": "magnitude", "seed": 0, "sparsity": 0.7, "history": history((0.9, 0.3), (0.9, 0.2))},
        {"method": "magnitude", "seed": 0, "sparsity": 0.5, "history": history((0.9, 0.0))},
    ]
    table, curves = report_bifp.efficiency_table(records, dense, ["a", "b"], 0.7, None, 0.01)
    by_method = table.set_index("method")
    assert by_method.loc["bifp_uns", "passes"] == 30 and by_method.loc["bifp_uns", "epoch"] == 3
    assert by_method.loc["magnitude+fair_bf", "passes"] == 110 and by_method.loc["magnitude+fair_bf", "seconds"] == 51
    assert np.isnan(by_method.loc["magnitude", "passes"])  # never within the dense gap of 0.1
    assert len(table) == 3 and curves["magnitude+fair_bf"][0][0][0] == 110


def test_claims_table_tests_seeds_pairwise():
    rows = []
    for seed, noise in enumerate([0.0, 0.01, -0.01, 0.02]):
        rows += [{"method": "dense", "sparsity": 0.0, "seed": seed, "accuracy": 0.9, "accuracy_gap": 0.10 + noise,
                  "acc/a": 0.85, "acc/b": 0.95 + noise},
                 {"method": "magnitude", "sparsity": 0.7, "seed": seed, "accuracy": 0.88, "accuracy_gap": 0.30 + noise,
                  "acc/a": 0.70 - noise, "acc/b": 1.0},
                 {"method": "bifp_uns", "sparsity": 0.7, "seed": seed, "accuracy": 0.875, "accuracy_gap": 0.05 + noise,
                  "acc/a": 0.85, "acc/b": 0.90 + noise, "surrogate_excess": 0.0}]
    claims = report_bifp.claims_table(pd.DataFrame(rows), 0.7, 0.02, pd.DataFrame()).set_index("claim")
    dense = claims.loc["bifp_uns: accuracy gap no larger than the dense model's"]
    assert dense["holds"] == "yes" and dense["significant"] == "n/a"  # a constant difference has no variance
    half = claims.loc["bifp_uns: accuracy gap at most half of magnitude pruning's"]
    assert half["holds"] == "yes"
    accuracy = claims.loc["bifp_uns: accuracy within 1 point of the best non-fair baseline"]
    assert accuracy["holds"] == "yes" and "magnitude" in accuracy["against"]
    worst = claims.loc["bifp_uns: the worst group gains (its accuracy at least magnitude pruning's)"]
    assert worst["holds"] == "yes" and worst["measured"].startswith("0.850") and worst["significant"] == "yes"
    levelled = claims.loc["bifp_uns: no levelling down (best group within 1 point of magnitude pruning's)"]
    assert levelled["holds"] == "no" and levelled["against"].startswith("magnitude 1.000")


def test_the_report_links_a_tuning_result_only_when_it_is_this_runs(tmp_path):
    """A named config's report showed reports/tune/ of the default run (another checkout's study)."""
    from fairprune.report import OPTIONAL_TABLES, remove_optional_tables, tuning_section

    record = {"method": "magnitude+fair_aft", "sparsity": 0.9, "study": "s", "chosen": {"number": 3},
              "inputs_digest": "abc"}
    assert "tune/README.md" in "\n".join(tuning_section(record, "abc"))
    stale = "\n".join(tuning_section(record, "other"))
    assert "not this run's" in stale and "tune/README.md" not in stale
    assert "not this run's" in "\n".join(tuning_section({**record, "inputs_digest": None}, "abc"))
    assert tuning_section(None, "abc") == []
    for name in OPTIONAL_TABLES:
        (tmp_path / name).write_text("left by an earlier run")
    remove_optional_tables(tmp_path)
    assert not any((tmp_path / name).exists() for name in OPTIONAL_TABLES)


def test_the_tune_inputs_digest_follows_what_a_study_reads_and_the_data(tmp_path, monkeypatch):
    from fairprune import artifacts
    from fairprune.config import validate

    monkeypatch.chdir(tmp_path)
    base = artifacts.tune_inputs_digest(validate({}))
    assert artifacts.tune_inputs_digest(validate({"report": {"claims_sparsity": 0.5}})) == base
    assert artifacts.tune_inputs_digest(validate({"prune": {"sparsities": [0.5]}})) == base
    assert artifacts.tune_inputs_digest(validate({"mitigation": {"tolerance": 0.3}})) != base
    assert artifacts.tune_inputs_digest(validate({"data": {"val_fraction": 0.3}})) != base
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "source.json").write_text('{"digest": "x"}')
    assert artifacts.tune_inputs_digest(validate({})) != base


def test_no_ablation_section_without_an_ablation_in_the_run(tmp_path):
    """The report showed an "Ablations" figure for a run of bifp_uns and magnitude only."""
    import pandas as pd

    from fairprune.report_bifp import ablation_figure

    rows = [{"method": m, "sparsity": 0.9, "seed": s, "accuracy": 0.9 - 0.01 * s, "accuracy_gap": 0.1}
            for m in ("bifp_uns", "magnitude") for s in (0, 1)]
    assert ablation_figure(pd.DataFrame(rows), 0.9, tmp_path / "a.png") is None
    rows += [{**row, "method": "bifp_no_fair"} for row in rows[:2]]
    assert ablation_figure(pd.DataFrame(rows), 0.9, tmp_path / "a.png").is_file()

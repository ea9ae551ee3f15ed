"""docs/results.md quotes only what `python -m fairprune.results table NAME` prints from the committed
files, and the table says levelling down where a narrower gap came with the best-off group below
its dense accuracy."""
import json
import re

import pytest

from conftest import REPO
from fairprune import results

BLOCK = re.compile(r"<!-- table: (\S+) -->\n(.*?)<!-- end table -->", re.S)
VALIDATION = re.compile(r"<!-- validation: (\S+) -->\n(.*?)<!-- end validation -->", re.S)


def test_every_table_in_the_results_page_is_what_the_generator_prints(monkeypatch):
    monkeypatch.chdir(REPO)
    page = (REPO / "docs" / "results.md").read_text()
    blocks = BLOCK.findall(page)
    for name, quoted in blocks:
        assert (REPO / "results" / name / "eval").is_dir(), f"docs/results.md quotes results/{name}, which is missing"
        assert quoted == results.table(name), f"docs/results.md's table for {name} is stale: regenerate it"
    for page in sorted((REPO / "docs").glob("*.md")):
        for name, quoted in VALIDATION.findall(page.read_text()):
            assert quoted == results.validation(name), f"{page.name}'s validation table for {name} is stale"


def record(method, sparsity, seed, accuracies, overall, gap, psi):
    return {"method": method, "sparsity": sparsity, "seed": seed, "accuracy": overall,
            "groups": {g: {"accuracy": a, "n": 10} for g, a in zip(("a", "b"), accuracies)},
            "fairness": {"accuracy_gap": gap, "worst_excess_drop": psi}}


def write(tmp_path, records):
    (tmp_path / "results" / "toy" / "eval").mkdir(parents=True)
    for i, r in enumerate(records):
        (tmp_path / "results" / "toy" / "eval" / f"{i}.json").write_text(json.dumps(r))


def test_levelling_down_is_named_and_levelling_up_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        rows.append(record("dense", 0.0, seed, (0.9, 0.7), 0.8, 0.2, float("nan")))
        rows.append(record("magnitude", 0.9, seed, (0.9, 0.6 + noise), 0.75, 0.3 - noise, 0.05))
        # the gap narrows because the best-off group falls: levelling down
        rows.append(record("down", 0.9, seed, (0.7 + noise, 0.6), 0.65, 0.1 - noise, 0.0))
        # the gap narrows because the worst-off group rises, the best-off one keeps its accuracy
        rows.append(record("up", 0.9, seed, (0.9, 0.8 + noise), 0.85, 0.1 - noise, 0.0))
        # as magnitude give or take seed noise that changes sign: no claim either way
        rows.append(record("same", 0.9, seed, (0.9, 0.6), 0.75, 0.3 - noise + (0.02, -0.03, 0.01)[seed], 0.05))
    write(tmp_path, rows)
    table = results.table("toy")
    assert re.search(r"\| down \| 0.9 \|.*\| narrower gap, levelling down \|", table)
    assert re.search(r"\| up \| 0.9 \|.*\| narrower gap \|", table)
    assert re.search(r"\| same \| 0.9 \|.*\| no clear difference \|", table)
    assert "| up | 0.9 | 85.0 ± 0.0 |" in table
    assert "up at 0.9" in table and "down at 0.9" not in table  # down's accuracy is 10 points below magnitude's


def test_interval_is_a_t_interval_across_seeds():
    mean, half = results._interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)

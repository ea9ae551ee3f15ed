"""docs/results.md quotes only what `python -m fairprune.results table NAME` prints from the committed
files, and the table says levelling down where a narrower gap came with the best-off group below
its dense accuracy."""
import json
import re

import numpy as np
from conftest import REPO
from fairprune import results
from fairprune.statistics import pack_correct

BLOCK = re.compile(r"<!-- table: (\S+) -->\n(.*?)<!-- end table -->", re.S)
VALIDATION = re.compile(r"<!-- validation: (\S+) -->\n(.*?)<!-- end validation -->", re.S)


def test_every_table_in_the_results_page_is_what_the_generator_prints(monkeypatch):
    monkeypatch.chdir(REPO)
    assert BLOCK.findall((REPO / "docs" / "results.md").read_text())
    for page in sorted((REPO / "docs").glob("*.md")):
        for name, quoted in BLOCK.findall(page.read_text()):
            assert (REPO / "results" / name / "eval").is_dir(), f"{page.name} quotes results/{name}, which is missing"
            assert quoted == results.table(name), f"{page.name}'s table for {name} is stale: run `make results`"
        for name, quoted in VALIDATION.findall(page.read_text()):
            assert quoted == results.validation(name), f"{page.name}'s validation table for {name} is stale"


def record(method, sparsity, seed, accuracies, n=2000):
    """Per-sample correctness: the first accuracy * n samples of each group right (nested across models,
    as pruning keeps most of a model's correct answers)."""
    correct = {g: np.arange(n) < round(a * n) for g, a in zip(("a", "b"), accuracies)}
    return {"method": method, "sparsity": sparsity, "seed": seed,
            "groups": {g: {"accuracy": float(c.mean()), "n": n} for g, c in correct.items()},
            "correct": {g: pack_correct(c) for g, c in correct.items()}}


def write(tmp_path, records):
    (tmp_path / "results" / "toy" / "eval").mkdir(parents=True)
    for i, r in enumerate(records):
        (tmp_path / "results" / "toy" / "eval" / f"{i}.json").write_text(json.dumps(r))


def test_levelling_down_is_named_and_levelling_up_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = []
    for seed, noise in enumerate((0.0, 0.01, -0.01)):
        rows.append(record("dense", 0.0, seed, (0.9, 0.7)))
        rows.append(record("magnitude", 0.9, seed, (0.9, 0.6 + noise)))
        # the gap narrows because the best-off group falls: levelling down
        rows.append(record("down", 0.9, seed, (0.7 + noise, 0.6)))
        # the gap narrows because the worst-off group rises, the best-off one keeps its accuracy
        rows.append(record("up", 0.9, seed, (0.9, 0.8 + noise)))
        # magnitude's model: no claim either way
        rows.append(record("same", 0.9, seed, (0.9, 0.6 + noise)))
        # 0.25 point below magnitude in accuracy: within 0.5 point
        rows.append(record("close", 0.9, seed, (0.9, 0.595 + noise)))
    write(tmp_path, rows)
    table = results.table("toy", n_boot=500)
    assert re.search(r"\| down \| 0.9 \|.*: narrower gap, levelling down \| not shown", table)
    assert re.search(r"\| up \| 0.9 \|.*: narrower gap \| yes", table)
    assert re.search(r"\| same \| 0.9 \|.*p = 1.000: no significant difference \| yes", table)
    assert re.search(r"\| close \| 0.9 \|.*\| yes \(p (< 0.001|= 0\.0[0-4]\d)\) \|", table)
    assert "| up | 0.9 | 85.0 [" in table
    assert "test samples per group: a 2000, b 2000" in table and "Holm-adjusted over this table's 8 tests" in table

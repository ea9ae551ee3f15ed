# Two commands set everything up on a fresh machine:  make run   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install params run run-parallel tune dashboard plots protocol status test test-slow bench results docs clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: pip takes these two wheels from local disk on the project machines.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# CONFIG=configs/<name>.yaml merges a named configuration into params.yaml first and reproduces
# its report; the Optuna study (`make tune`) is left out there, since the default `tune` section
# would otherwise run 16 trials of the configuration's (possibly paper-scale) model.
params: install
ifdef CONFIG
	$(BIN)/fairprune-params apply $(CONFIG)
endif
	$(BIN)/fairprune-params check params.yaml
	$(BIN)/python -m fairprune.tracking

run: params
	$(BIN)/dvc repro $(if $(CONFIG),report)

# The same, JOBS stages at a time (a GPU runner, where one stage leaves the device mostly idle);
# each finished stage is committed to dvc.lock as `dvc repro` would have.
run-parallel: params
	$(BIN)/python -m fairprune.parallel --jobs $(or $(JOBS),2) $(if $(CONFIG),report)

# The Optuna study of params.yaml's `tune` section (after the data and dense models it needs);
# WORKERS=N runs N worker processes on this machine against the same study.
tune: install
	$(BIN)/fairprune-params check params.yaml
	$(BIN)/python -m fairprune.tracking
	FAIRPRUNE_TUNE_WORKERS=$(WORKERS) $(BIN)/dvc repro tune

# A named benchmark (configs/bench_*.yaml) end to end: the tune stage chooses the fair arm's step and
# tolerance on validation, its choice is merged in, the matrix runs JOBS stages at a time and is
# evaluated once on test, and its metrics land in results/<config name>/.
protocol: params
	$(if $(CONFIG),,$(error give CONFIG=configs/bench_<name>.yaml))
	$(BIN)/dvc repro tune
	$(BIN)/fairprune-params apply reports/tune/chosen.yaml
	$(BIN)/python -m fairprune.parallel --jobs $(or $(JOBS),2) evaluate
	$(BIN)/python -m fairprune.results collect $(basename $(notdir $(CONFIG))) --config $(CONFIG) --config reports/tune/chosen.yaml

# optuna-dashboard on the study's storage (tune.storage / FAIRPRUNE_TUNE_STORAGE; default the project's
# SQLite file), at http://127.0.0.1:$(PORT) (8080).
dashboard: install
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(or $(PORT),8080) $(or $(FAIRPRUNE_TUNE_STORAGE),sqlite:///$(CURDIR)/tune/optuna.db)

# DVC's plots (figures, accuracy and gap vs sparsity, per-epoch curves) as dvc_plots/index.html, which
# opens offline; ARGS="diff HEAD~1" compares with another commit (any `dvc plots` arguments).
plots: install
	$(BIN)/python -m fairprune.plots $(ARGS)

# What `dvc repro` would rerun: validate first, since the data files' digest and each method's params
# (what its prune stages depend on) are its outputs.
status: install
	$(BIN)/dvc repro -q validate
	$(BIN)/dvc status

test: install
	$(BIN)/python -m pytest

# Every generated table in docs/ from the committed results/ (tests/test_results_docs.py checks them).
results: install
	$(BIN)/python -m fairprune.results docs

# Every generated block in docs/: the results tables and the parameter reference.
docs: results
	$(BIN)/python -m fairprune.params_doc

test-slow: install
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/bench_evaluation.py
	$(BIN)/python benchmarks/bench_pruning.py
	$(BIN)/python benchmarks/bench_mitigation.py
	$(BIN)/python benchmarks/bench_bifp.py
	$(BIN)/python benchmarks/bench_tune.py
	$(BIN)/python benchmarks/bench_pipeline.py

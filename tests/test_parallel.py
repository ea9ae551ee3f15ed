"""`python -m fairprune.parallel`: the pipeline's stages run side by side and land in dvc.lock as
if `dvc repro` had run them; a failed stage stops only what depends on it."""
import subprocess
import sys

import pytest
import yaml
from conftest import make_project, sh

SMALL = {
    "base": {"seeds": [0, 1], "threads": 1},
    "train": {"epochs": 1, "variants": ["plain"]},
    "prune": {"methods": ["magnitude", "snip"], "sparsities": [0.5]},
    "finetune": {"epochs": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("parallel")
    return work, make_project(work, SMALL)


def parallel(work, env, *args, expect=0):
    return sh([sys.executable, "-m", "fairprune.parallel", *args], work, env, expect=expect)


def test_stages_run_in_parallel_are_committed_and_not_rerun(project):
    work, env = project
    out = parallel(work, env, "--jobs", "3", "prune")
    assert "8 ran, 0 up to date, 0 failed" in out  # validate, prepare, 2 dense models, 4 pruned ones
    for seed in (0, 1):
        for method in ("magnitude", "snip"):
            assert (work / "models" / "pruned" / f"{method}-0.5-s{seed}.pt").is_file()
    assert "up to date" in sh(["dvc", "status", "prune"], work, env)
    assert "1 ran, 7 up to date" in parallel(work, env, "--jobs", "3", "prune")  # validate always runs


def test_a_methods_stages_rerun_only_for_the_params_it_reads(project):
    """Changing any prune.bifp key reran every prune stage (magnitude and SNIP too)."""
    work, env = project
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["prune"]["bifp"]["score_lr"] = 0.005  # read by the BiFP methods only: nothing here reruns
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "1 ran, 7 up to date" in parallel(work, env, "--jobs", "2", "prune")
    params["prune"]["score_batches"] = 2  # read by SNIP, not by magnitude
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = parallel(work, env, "--jobs", "2", "prune")
    assert "3 ran, 5 up to date" in out
    assert "prune@snip-0.5-0: ran" in out and "prune@magnitude-0.5-0: up to date" in out


def test_a_failed_stage_blocks_its_downstream_only_and_exits_non_zero(project):
    work, env = project
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["prune"]["score_batches"] = 0  # invalid: the validate stage stops the run before any other stage
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = parallel(work, env, "--jobs", "2", "evaluate", expect=1)
    assert "1 failed (validate)" in out and "not run because an upstream stage failed" in out
    assert "prune.score_batches" in out  # the failing stage's own error is shown
    assert "up to date" not in sh(["dvc", "status", "evaluate"], work, env)


def test_a_stage_no_node_can_hold_is_refused_before_anything_runs(tmp_path):
    """A local instance without a GPU and run.gpus_per_stage > 0: every task would wait forever."""
    env = make_project(tmp_path, {**SMALL, "run": {"gpus_per_stage": 0.25}})
    result = subprocess.run([sys.executable, "-m", "fairprune.parallel", "--jobs", "1", "prepare"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "run.gpus_per_stage = 0.25 but the largest node has 0 GPU(s)" in result.stderr
    assert "ran" not in result.stdout
    assert not (tmp_path / "data" / "prepared.pt").exists()


def test_a_simple_stage_command_runs_without_a_shell_so_it_dies_with_its_worker():
    from fairprune.parallel import argv_of

    assert argv_of("python pipeline/prune.py") == ["python", "pipeline/prune.py"]
    assert argv_of("/venv/bin/python '/a b/tune.py' --worker 1") == ["/venv/bin/python", "/a b/tune.py", "--worker", "1"]
    assert argv_of("python a.py && python b.py") is None and argv_of("echo $HOME > x") is None


def test_a_retried_stage_starts_its_log_section_on_a_line_of_its_own(tmp_path, monkeypatch):
    """A killed attempt can leave a progress bar's line unterminated; the retry's header must not join it."""
    import ray

    from fairprune.parallel import run_stage

    class Context:
        def get_node_id(self):
            return "node-b"

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    log = tmp_path / "stage.log"
    log.write_text("--- attempt on node node-a at 00:00:00\nepoch 3/8 ▌\r")
    code, _, node = run_stage(f"{sys.executable} -c pass", str(tmp_path), {}, "prune@x", str(log))
    assert code == 0 and node == "node-b"
    assert "▌\r\n--- attempt on node node-b at " in log.read_bytes().decode()

"""Optuna tuning against a real SQLite / journal storage and a real MLflow store."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import mlflow
import optuna
import pytest

from emovision import tuning
from emovision.config import load_params
from stages.prepare import main as prepare_main
from stages.tune import main as tune_main
from stages.tune import tune
from tests.conftest import REPO, write_params

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def project(in_tmp, mlflow_store):
    write_params(in_tmp / "params.yaml")
    assert prepare_main(["--params", "params.yaml"]) == 0
    return in_tmp


def storage_url(root):
    return f"sqlite:///{root / 'optuna.db'}"


def nested_runs():
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_study_records_trials_resumes_and_logs_nested_runs(project):
    args = ["--params", "params.yaml", "--n-trials", "3", "--storage", storage_url(project)]
    assert tune_main(args) == 0
    study = optuna.load_study(study_name="fer-lr-dropout", storage=storage_url(project))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    runs = nested_runs()
    assert sorted(r.data.tags["trial_number"] for r in runs) == ["0", "1", "2"]
    assert all(r.data.tags["trial_state"] == "COMPLETE" and "val_acc" in r.data.metrics for r in runs)
    best = json.loads((project / "reports" / "tune" / "best_params.json").read_text())
    assert best["val_acc"] == study.best_value and set(best) >= {"train.lr", "model.dropout"}
    for png in ("optimization_history.png", "accuracy_vs_lr.png", "accuracy_vs_dropout.png"):
        assert (project / "reports" / "tune" / png).stat().st_size > 1000
    # a second invocation resumes the same study
    assert tune_main(args) == 0
    study = optuna.load_study(study_name="fer-lr-dropout", storage=storage_url(project))
    assert [t.number for t in study.trials] == list(range(6))
    assert len(nested_runs()) == 6


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trials_are_recorded(project):
    params = load_params("params.yaml")
    with pytest.raises(Exception, match="no trial"):  # every trial pruned: nothing to apply
        tune(params, 2, 0, 2, "pruning", storage_url(project), 1, pruner=AlwaysPrune())
    study = optuna.load_study(study_name="pruning", storage=storage_url(project))
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(len(t.intermediate_values) == 1 for t in study.trials)  # stopped after epoch 1
    assert {r.data.tags["trial_state"] for r in nested_runs()} == {"PRUNED"}


def test_apply_edits_only_the_two_values(project):
    shutil.copy(REPO / "params.yaml", project / "full.yaml")
    original = (project / "full.yaml").read_text().splitlines()
    tuning.apply_to_params_file(project / "full.yaml", {"train.lr": 0.000123, "model.dropout": 0.42})
    edited = (project / "full.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, edited) if a != b]
    assert len(edited) == len(original) and len(changed) == 2
    assert changed[0][1].startswith("  dropout: 0.42 ") and changed[1][1].startswith("  lr: 0.000123 ")
    for before, after in changed:  # the comment survives, in the same column
        assert before[before.index("#"):] == after[after.index("#"):]
    p = load_params(project / "full.yaml")
    assert (p.train.lr, p.model.dropout) == (0.000123, 0.42)


def test_apply_flag_writes_best_into_params(project):
    assert tune_main(["--params", "params.yaml", "--n-trials", "2", "--storage", storage_url(project),
                      "--apply"]) == 0
    best = json.loads((project / "reports" / "tune" / "best_params.json").read_text())
    p = load_params("params.yaml")
    assert p.train.lr == pytest.approx(best["train.lr"], rel=1e-5)
    assert p.model.dropout == pytest.approx(best["model.dropout"], rel=1e-5)


def test_two_workers_share_a_journal_study(project, mlflow_store):
    journal = project / "study.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.tune", "--params", "params.yaml", "--n-trials", "2",
           "--storage", f"journal:///{journal}"]
    workers = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outs]
    storage = tuning.open_storage(f"journal:///{journal}")
    study = optuna.load_study(study_name="fer-lr-dropout", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}  # the median pruner may stop one


def test_stale_running_trial_is_failed_and_retried(project, monkeypatch):
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    url = storage_url(project)
    params = load_params("params.yaml")
    study = tuning.load_study(params, tuning.open_storage(url), "stale", tuning.make_pruner("median"))
    trial = study.ask()  # a worker that starts a trial and is killed
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url,
                      "--study-name", "stale"]) == 0
    states = [t.state.name for t in optuna.load_study(study_name="stale", storage=url).trials]
    assert states == ["FAIL", "COMPLETE"]  # the dead trial failed, its retry ran


@pytest.mark.parametrize("args, message", [
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open Optuna storage"),
    (["--storage", "notascheme"], "cannot open Optuna storage 'notascheme'"),
    (["--n-trials", "0"], "--n-trials must be >= 1"),
    (["--pruner", "random"], None),
])
def test_bad_cli_input(project, capsys, args, message):
    if message is None:
        with pytest.raises(SystemExit):
            tune_main(["--params", "params.yaml", *args])
        return
    assert tune_main(["--params", "params.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_inverted_range_and_changed_space(project, capsys):
    write_params(project / "bad.yaml", {"tune": {"lr_low": 0.1, "lr_high": 0.001}})
    assert tune_main(["--params", "bad.yaml"]) == 2
    assert "tune.lr_low must be > 0 and below tune.lr_high" in capsys.readouterr().err
    url = storage_url(project)
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url]) == 0
    write_params(project / "other.yaml", {"tune": {"n_trials": 1, "epochs": 1, "dropout_high": 0.3}})
    assert tune_main(["--params", "other.yaml", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "exists with another search space" in err and "model.dropout" in err and "--study-name" in err

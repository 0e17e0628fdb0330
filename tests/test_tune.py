"""Optuna tuning against a real SQLite / journal storage and a real MLflow store."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import mlflow
import numpy as np
import optuna
import pytest

from emovision import fileio, tracking, tuning
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


def test_study_records_trials_resumes_logs_nested_runs_and_applies(project):
    url = storage_url(project)
    args = ["--params", "params.yaml", "--n-trials", "3", "--storage", url]
    assert tune_main(args) == 0
    study = optuna.load_study(study_name="fer-lr-dropout", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    runs = nested_runs()
    assert sorted(r.data.tags["trial_number"] for r in runs) == ["0", "1", "2"]
    assert all(r.data.tags["trial_state"] == "COMPLETE" and "val_acc" in r.data.metrics for r in runs)
    reports = project / "reports" / "tune"
    best = json.loads((reports / "best_params.json").read_text())
    assert best["val_acc"] == study.best_value and best["n_trials"] == 3
    assert best["train.lr"] == study.best_params["train.lr"]
    for png in ("optimization_history.png", "accuracy_vs_lr.png", "accuracy_vs_dropout.png"):
        assert (reports / png).stat().st_size > 1000
    assert len((reports / "trials.csv").read_text().splitlines()) == 4

    assert tune_main(args) == 0  # a second invocation resumes the same study...
    study = optuna.load_study(study_name="fer-lr-dropout", storage=url)
    assert [t.number for t in study.trials] == list(range(6))
    assert len({tuple(t.params.values()) for t in study.trials}) == 6  # ...with fresh start points
    assert len(nested_runs()) == 6
    parents = [r for r in mlflow.MlflowClient().search_runs([runs[0].info.experiment_id])
               if r.data.tags.get("stage") == "tune"]
    assert len(parents) == 2 and all("best_val_acc" in r.data.metrics for r in parents)

    # --n-trials 0 --apply: the study's best into a copy of the real, commented params.yaml
    shutil.copy(REPO / "params.yaml", project / "full.yaml")
    original = (project / "full.yaml").read_text().splitlines()
    assert tune_main(["--params", "full.yaml", "--n-trials", "0", "--storage", url, "--apply"]) == 0
    edited = (project / "full.yaml").read_text().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(original, edited)) if a != b]
    assert len(edited) == len(original) and len(changed) == 2
    assert {edited[i].split(":")[0].strip() for i in changed} == {"lr", "dropout"}
    for i in changed:  # the comment survives, in the same column
        assert original[i][original[i].index("#"):] == edited[i][edited[i].index("#"):]
    p = load_params(project / "full.yaml")
    assert p.train.lr == pytest.approx(study.best_params["train.lr"], rel=1e-5)
    assert p.model.dropout == pytest.approx(study.best_params["model.dropout"], rel=1e-5)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_parallel_trials_share_the_cpus_out(project):
    """n_jobs trials train at once in one process, and torch's thread count is the process's:
    with train.threads 2, two trials ran 2 threads each, 4 on 2 CPUs."""
    from emovision.device import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("needs 2 usable CPUs to share out")
    write_params(project / "jobs.yaml", {"train": {"threads": 2}, "tune": {"n_trials": 2, "n_jobs": 2}})
    assert tune_main(["--params", "jobs.yaml", "--storage", storage_url(project), "--quiet"]) == 0
    assert [r.data.tags["torch_threads"] for r in nested_runs()] == ["1", "1"]


def test_pruned_trials_are_recorded(project, capsys):
    # on the demo set trials train the width train builds there (demo.width), not model.width
    params = load_params("params.yaml").replace(**{
        "tune.epochs": 2, "tune.n_trials": 2, "tune.study_name": "pruning", "tune.storage": storage_url(project),
        "model.width": 12, "demo.width": 8})
    with pytest.raises(Exception, match="no trial .* has completed"):  # nothing left to report as best
        tune(params, pruner=AlwaysPrune())
    study = optuna.load_study(study_name="pruning", storage=storage_url(project))
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in study.trials)  # stopped after epoch 1 of 2
    assert sorted(r.data.tags["trial_state"] for r in nested_runs()) == ["PRUNED", "PRUNED"]
    out = capsys.readouterr().out
    assert "PRUNED" in out and "demo set: model.width 12 -> 8 in every trial" in out
    parent, = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.data.tags.get("stage") == "tune"]
    assert parent.data.params["model.width"] == "8"


def test_a_warm_up_longer_than_a_trial_is_capped_not_refused(project, capsys):
    # train.warmup_epochs <= train.epochs is checked; a trial's epochs are tune.epochs. The cap is said
    # (it was silent): every trial is then all warm-up
    params = load_params("params.yaml").replace(**{
        "tune.epochs": 2, "tune.n_trials": 1, "tune.study_name": "warm", "tune.storage": storage_url(project),
        "train.epochs": 5, "train.warmup_epochs": 3.0, "demo.width": 8})
    with pytest.raises(Exception, match="no trial .* has completed"):
        tune(params, pruner=AlwaysPrune())
    assert "tune.epochs 2: train.warmup_epochs 3 is cut to 2 in every trial" in capsys.readouterr().out
    study = optuna.load_study(study_name="warm", storage=storage_url(project))
    assert [t.state.name for t in study.trials] == ["PRUNED"]  # trained its first epoch, not FAIL


def test_the_study_line_counts_the_images_a_trial_epoch_uses(project, capsys):
    """Trials train under train.max_train_images as train does: the line said '140 train'."""
    write_params(project / "params.yaml", {"train": {"max_train_images": 100}})
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", storage_url(project)]) == 0
    assert "on synthetic a random 100 of 140 train images each epoch: train.max_train_images / 28 val)" \
        in capsys.readouterr().out


def test_apply_keeps_every_other_byte_and_writes_yaml_floats(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    original = path.read_text().splitlines()
    tuning.apply_to_params_file(path, {"train.lr": 5e-05, "model.dropout": 0.42})
    edited = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, edited) if a != b]
    assert len(edited) == len(original) and len(changed) == 2
    assert changed[0][1].startswith("  dropout: 0.42 ") and changed[1][1].startswith("  lr: 5.0e-05 ")
    p = load_params(path)  # PyYAML reads a bare `5e-05` as a string
    assert (p.train.lr, p.model.dropout) == (5e-05, 0.42)
    assert oct(path.stat().st_mode & 0o777) == oct((REPO / "params.yaml").stat().st_mode & 0o777)


def test_two_workers_share_a_journal_study(project, mlflow_store):
    tracking.setup()  # the experiment exists before the workers start, as in a used project
    journal = project / "study.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.tune", "--params", "params.yaml", "--n-trials", "2",
           "--storage", f"journal:///{journal}"]
    workers = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outs]
    study = optuna.load_study(study_name="fer-lr-dropout", storage=tuning.open_storage(f"journal:///{journal}"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert len({tuple(t.params.values()) for t in study.trials}) == 4  # no start point proposed twice
    assert sorted(r.data.tags["trial_number"] for r in nested_runs()) == ["0", "1", "2", "3"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_running_trial_is_failed_and_retried(project, monkeypatch):
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    url = storage_url(project)
    params = load_params("params.yaml").replace(**{"tune.study_name": "stale"})
    study = tuning.load_study(params, tuning.open_storage(url))
    trial = study.ask()  # a worker that starts a trial and is killed: one heartbeat, then silence
    space = tuning.search_space(params)
    lost_params = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()}
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url,
                      "--study-name", "stale"]) == 0
    trials = optuna.load_study(study_name="stale", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # the dead trial failed, its retry ran
    assert trials[1].params == lost_params and trials[1].system_attrs["failed_trial"] == 0
    assert [r.data.tags.get("retry_of_trial") for r in nested_runs()] == ["0"]


@pytest.mark.parametrize("name", ["study.log", "optuna.db"])
def test_a_report_on_a_storage_file_that_is_not_there_makes_none(project, capsys, name):
    """`--n-trials 0` (report, or apply) on a mistyped storage path said 'no study' and left
    an empty journal file or SQLite database of that name behind."""
    path = project / name
    url = str(path) if name.endswith(".log") else f"sqlite:///{path}"
    assert tune_main(["--params", "params.yaml", "--n-trials", "0", "--apply", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} does not exist, and was not made" in err
    assert not (project / name).exists()


def test_a_refused_mlflow_store_or_missing_data_makes_no_study(project, capsys, monkeypatch):
    """Trials refused in one line (an MLFLOW_TRACKING_URI MLflow will not open; no prepared data)
    had already made their study: an empty study of that name was left in the storage. The data
    and the store are now checked before the study is made."""
    url, store = storage_url(project), os.environ["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(project))  # a folder: MLflow 3 has no store for it
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url, "--study-name", "a"]) == 2
    assert "cannot be used" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    shutil.rmtree(project / "data" / "prepared")
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url, "--study-name", "b"]) == 2
    capsys.readouterr()
    assert not (project / "optuna.db").exists() or optuna.get_all_study_names(url) == []


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///:memory:", "sqlite:///:memory:?cache=shared", "sqlite:///file:x?mode=memory&uri=true",
    "sqlite:///file::memory:?uri=true", "sqlite:///file::memory:?cache=shared&uri=true",  # were taken for files
    "sqlite:///memory.db", "sqlite:///file:x.db?uri=true", "sqlite:///file::memory:",  # a file of that name
    "sqlite:///file:mode=memory/x.db?uri=true",  # a folder named mode=memory: was refused as in memory
])
def test_in_memory_agrees_with_sqlite(url, tmp_path, monkeypatch):
    """`file::memory:?cache=shared&uri=true` (SQLite's documented shared in-memory database) was taken
    for a file, its study lost when tune ended; a folder named `mode=memory` was refused. Judged
    against SQLite itself: an in-memory database lists no file."""
    import sqlalchemy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mode=memory").mkdir()
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        in_memory = connection.exec_driver_sql("PRAGMA database_list").fetchall()[0][2] == ""
    engine.dispose()
    assert tuning.in_memory(url) == in_memory


@pytest.mark.parametrize("args, message", [
    (["--storage", "postgresql://nobody:hunter2@127.0.0.1:1/none"], "cannot open Optuna storage "
                                                                     "'postgresql://***@127.0.0.1:1/none'"),
    (["--storage", "postgresql://127.0.0.1:1/none?user=nobody&password=hunter2"],
     "cannot open Optuna storage 'postgresql://127.0.0.1:1/none?user=nobody&password=***'"),
    (["--storage", "notascheme"], "cannot open Optuna storage 'notascheme'"),
    # SQLite in memory: the trials ran, and the study was gone when tune ended
    (["--n-trials", "1", "--storage", "sqlite://"], "Optuna storage 'sqlite://' is an in-memory SQLite database"),
    (["--n-trials", "1", "--storage", "sqlite:///:memory:"], "is an in-memory SQLite database"),
    # every flag is checked by the params' own rules, and the line names the flag
    (["--n-trials", "-1"], "--n-trials: tune.n_trials must be in [0, 10000] (0: report the study"),
    (["--n-trials", "99999999999"], "--n-trials: tune.n_trials must be in [0, 10000]"),
    (["--epochs", "0"], "--epochs: tune.epochs must be in [1, 10000]"),
    (["--timeout", "-5"], "--timeout: tune.timeout must be >= 0"),
    (["--n-jobs", "0"], "--n-jobs: tune.n_jobs must be in [1, 256]"),
    (["--study-name", " "], "--study-name: tune.study_name must be a study name"),
    (["--n-trials", "0", "--study-name", "nope"], "no study 'nope' in this storage (it has: none; "),
])
def test_bad_cli_input_is_one_line(project, capsys, args, message):
    assert tune_main(["--params", "params.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "hunter2" not in err


@pytest.mark.filterwarnings("ignore:Query string argument")
def test_printed_apply_command_pastes_without_printing_a_password(in_tmp, capsys, monkeypatch):
    """The `next:` command once printed a storage URL with its password masked (`***`), which cannot
    connect. A URL without credentials is printed exactly (quoted for the shell); one with them is left
    to where it came from: the params file, or OPTUNA_STORAGE (Optuna's own CLI reads it too)."""
    write_params(in_tmp / "params.yaml")
    url = f"sqlite:///{in_tmp / 'my study.db'}"
    params = load_params("params.yaml")
    study = optuna.create_study(study_name=params.tune.study_name, storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"train.lr": 1e-3, "model.dropout": 0.37}, value=0.5,
                                              distributions=tuning.search_space(params)))

    def next_line(*args: str) -> tuple[str, str]:
        """The printed command and what follows it."""
        assert tune_main(["--params", "params.yaml", "--n-trials", "0", *args]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("next: "))
        command, _, rest = line.removeprefix("next: ").partition("   (")
        return command, rest

    assert shlex.split(next_line("--storage", url)[0])[-2:] == ["--storage", url]
    # SQLAlchemy's SQLite driver ignores a password in the query: a real storage with a secret in its URL
    secret = f"{url}?password=hunter2"
    command, rest = next_line("--storage", secret)
    assert "--storage" not in command and "***" not in command and "hunter2" not in command + rest
    assert "first set OPTUNA_STORAGE to the --storage URL" in rest
    monkeypatch.setenv("OPTUNA_STORAGE", secret)
    assert next_line() == (command, "writes them into the params file)")  # from OPTUNA_STORAGE: nothing to set
    assert tune_main(shlex.split(command)[3:]) == 0  # pasted, OPTUNA_STORAGE set: applies the study's best
    assert load_params("params.yaml").model.dropout == pytest.approx(0.37)
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://nobody:hunter2@127.0.0.1:1/none")
    assert tune_main(["--params", "params.yaml", "--n-trials", "0"]) == 2
    err = capsys.readouterr().err
    assert "OPTUNA_STORAGE: cannot open Optuna storage 'postgresql://***@127.0.0.1:1/none'" in err
    assert err.count("\n") == 1 and "hunter2" not in err


def test_inverted_range_and_studies_run_otherwise(project, capsys):
    write_params(project / "bad.yaml", {"tune": {"lr_low": 0.1, "lr_high": 0.001}})
    assert tune_main(["--params", "bad.yaml"]) == 2
    assert "tune.lr_low must be > 0 and below tune.lr_high" in capsys.readouterr().err
    url = storage_url(project)
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url]) == 0
    capsys.readouterr()
    write_params(project / "other.yaml", {"tune": {"n_trials": 1, "epochs": 1, "dropout_high": 0.3}})
    assert tune_main(["--params", "other.yaml", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "exists with another search space" in err and "model.dropout" in err and "--study-name" in err
    assert tune_main(["--params", "params.yaml", "--storage", url, "--epochs", "3"]) == 2
    assert "with 1 epochs per trial, now 3" in capsys.readouterr().err
    optuna.create_study(study_name="loss", storage=url, direction="minimize")
    assert tune_main(["--params", "params.yaml", "--storage", url, "--study-name", "loss"]) == 2
    assert "does not maximise one value" in capsys.readouterr().err


def test_seeded_sampler_gives_every_trial_its_own_draws(tmp_path):
    url = f"sqlite:///{tmp_path / 'seed.db'}"
    params = load_params(REPO / "params.yaml").replace(**{"tune.study_name": "seed"})

    def draws(study_name: str, invocations: int) -> list[tuple]:
        for _ in range(invocations):  # each invocation builds a new sampler, as a new process does
            study = tuning.load_study(params.replace(**{"tune.study_name": study_name}), tuning.open_storage(url))
            space = tuning.search_space(params)
            study.optimize(lambda t: sum(t.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()),
                           n_trials=4 // invocations)
        return [tuple(t.params.values()) for t in study.trials]

    resumed = draws("resumed", 2)
    assert len(set(resumed)) == 4
    assert draws("once", 1) == resumed  # reproducible: trial n's draws depend on (seed, n) alone
    # ... and spread out: one-int MT19937 seeds gave first draws within 0.2% of each other
    space = tuning.search_space(params)
    for i, (name, d) in enumerate(space.items()):
        lo, hi = (np.log(d.low), np.log(d.high)) if d.log else (d.low, d.high)
        pos = sorted(((np.log(r[i]) if d.log else r[i]) - lo) / (hi - lo) for r in resumed)
        assert min(np.diff(pos)) > 0.01, (name, pos)


def test_workers_starting_together_share_one_new_storage_and_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"  # every worker races to create Optuna's tables
    params = load_params(REPO / "params.yaml")
    study_ids, errors = [], []

    def worker():
        try:
            study_ids.append(tuning.load_study(params, tuning.open_storage(url))._study_id)
        except Exception as err:  # collected: an exception in a thread would pass unseen
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(study_ids) == 4 and len(set(study_ids)) == 1


def _tune_env(mlflow_store):
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("moment", ["epoch   1/2", "trial   0 "], ids=["mid-trial", "between-trials"])
def test_ctrl_c_is_one_line_and_leaves_no_trial_or_run_running(project, mlflow_store, moment):
    """Ctrl-C mid-trial printed Optuna's 20-line KeyboardInterrupt traceback. Now: one line,
    exit 130, no trial and no MLflow run left RUNNING, wherever the signal lands (in the
    objective Optuna fails the trial itself; while Optuna creates the next trial, run_trials
    does: test_a_trial_interrupted_while_it_is_created_is_failed)."""
    url = storage_url(project)
    proc = subprocess.Popen([sys.executable, "-m", "stages.tune", "--params", "params.yaml", "--n-trials", "3",
                             "--epochs", "2", "--storage", url], cwd=project, env=_tune_env(mlflow_store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(moment):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    states = [t.state.name for t in optuna.load_study(study_name="fer-lr-dropout", storage=url).trials]
    assert states[0] == ("FAIL" if moment.startswith("epoch") else "COMPLETE") and "RUNNING" not in states, states
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in [r.info.status for r in runs]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_killed_before_its_first_heartbeat_is_failed_and_retried(project, mlflow_store, monkeypatch):
    """kill -9 between creating a trial and Optuna's heartbeat thread's first beat: a trial
    without a beat is never stale, so it stayed RUNNING forever. It now beats at creation.
    (The worker says it runs on another machine: this machine's killed trials are failed at
    once, without the heartbeat.)"""
    url = storage_url(project)
    worker = ("import sys, time; from emovision import tuning; from emovision.config import load_params\n"
              f"study = tuning.load_study(load_params('params.yaml'), tuning.open_storage({url!r}))\n"
              "study.ask().set_user_attr(tuning.OWNER_ATTR, 'elsewhere.1')\n"
              "print('asked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=project, env=_tune_env(mlflow_store),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "asked"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    time.sleep(2.5)  # the grace period: a trial is stale once its last beat is this old
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url]) == 0
    trials = optuna.load_study(study_name="fer-lr-dropout", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == 0


def test_a_trial_interrupted_while_it_is_created_is_failed(project):
    """What run_trials does on Ctrl-C: a trial this process created but never handed to the
    objective (where Optuna marks nothing) is failed; other workers' trials are left alone."""
    url = storage_url(project)
    params = load_params("params.yaml")
    other = tuning.load_study(params, tuning.open_storage(url)).ask()  # another worker's live trial
    study = tuning.load_study(params, tuning.open_storage(url))
    ours = study.ask()
    assert tuning.fail_interrupted_trials(study) == [ours.number]
    states = {t.number: t.state.name for t in optuna.load_study(study_name="fer-lr-dropout", storage=url).trials}
    assert states == {other.number: "RUNNING", ours.number: "FAIL"}


def test_a_trial_killed_mid_run_is_retried_at_once_and_its_mlflow_runs_ended(project, mlflow_store, capsys):
    """kill -9 in the middle of a trial: the trial stayed RUNNING until the heartbeat's grace
    period (a minute) had passed, and its MLflow run and the killed invocation's run stayed
    RUNNING forever. The next worker on this machine sees the trial's owner is gone: it fails
    and retries it at once and ends both runs KILLED."""
    url = storage_url(project)
    proc = subprocess.Popen([sys.executable, "-m", "stages.tune", "--params", "params.yaml", "--n-trials", "2",
                             "--epochs", "2", "--storage", url], cwd=project, env=_tune_env(mlflow_store),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("epoch   1/2"):  # trial 0 is half done
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    client = mlflow.MlflowClient()
    killed = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert set(killed) == {"trial-0", "tune-fer-lr-dropout"}
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--epochs", "2", "--storage", url]) == 0
    trials = optuna.load_study(study_name="fer-lr-dropout", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].system_attrs["failed_trial"] == 0
    assert f"trial 0 failed: its worker ({fileio._machine()}.{proc.pid}) is gone" in capsys.readouterr().out
    assert {name: client.get_run(run_id).info.status for name, run_id in killed.items()} == {
        "trial-0": "KILLED", "tune-fer-lr-dropout": "KILLED"}
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in [r.info.status for r in runs]


# holds a write lock on a SQLite file from another process until its stdin closes
LOCKER = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
          "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read(); db.rollback()")
# a storage's wait on a lock (tuning.SQLITE_WAIT_S) in the tests that hold one: runs that give up sooner
SHORT_WAIT_S = 1


@contextlib.contextmanager
def locked(db):
    """Another process holding an exclusive lock on SQLite file `db` while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.parametrize("storage", ["sqlite:///{root}/typo/dir/optuna.db", "journal:///{root}/typo/dir/study.log",
                                     "typo/dir/study.journal"])
def test_a_storage_in_a_missing_folder_is_refused_and_no_folder_is_made(project, capsys, storage):
    """A journal path with a typo created every missing folder; sqlite:/// said only `unable to
    open database file` and advised on URL formats. Both now name the missing folder."""
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", storage.format(root=project)]) == 2
    err = capsys.readouterr().err
    missing = "typo" if storage.startswith("typo") else project / "typo"
    assert f"folder {missing} does not exist" in err, err
    assert err.count("\n") == 1 and not (project / "typo").exists()
    # a sqlite URL ending .log is a SQLite file, not a journal in a folder named `sqlite:` (an empty
    # file, as a report on a file that is not there makes none: 9aca1d2)
    (project / "x.log").touch()
    assert tune_main(["--params", "params.yaml", "--n-trials", "0", "--storage", "sqlite:///x.log"]) == 2
    assert not (project / "sqlite:").exists() and (project / "x.log").read_bytes().startswith(tracking.SQLITE_MAGIC)


def test_a_locked_storage_is_said_to_be_locked(project, capsys, monkeypatch):
    """A storage another process holds a write lock on ended in advice on URL formats."""
    monkeypatch.setattr(tuning, "SQLITE_WAIT_S", SHORT_WAIT_S)
    url = storage_url(project)
    tuning.open_storage(url)  # the database exists, with Optuna's tables
    with locked(project / "optuna.db"):
        assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert f"Optuna storage '{url}' is locked by another process (database is locked" in err, err
    assert "journal:///" not in err and err.count("\n") == 1


# worker code that waits for a file `locked` where the lock should fall, after saying `paused`
PAUSE = "print('paused', flush=True)\n    while not os.path.exists('locked'): time.sleep(0.05)\n"
PAUSE_BETWEEN_TRIALS = ("said = tune.print_trial\n"
                        "def print_trial(study, trial):\n"
                        f"    said(study, trial)\n    {PAUSE}"
                        "tune.print_trial = print_trial\n")
PAUSE_IN_TRIAL_1 = ("logged, runs = tuning.TrialLogger.epoch, set()\n"  # after trial 1's first epoch, before it reports
                    "def epoch(run_id, epoch, metrics):\n"
                    "    logged(run_id, epoch, metrics); runs.add(run_id)\n"
                    "    if len(runs) < 2: return\n"
                    f"    {PAUSE}"
                    "tuning.TrialLogger.epoch = staticmethod(epoch)\n")


@pytest.mark.parametrize("pause, states", [(PAUSE_BETWEEN_TRIALS, ["COMPLETE"]),
                                           (PAUSE_IN_TRIAL_1, ["COMPLETE", "RUNNING"])],
                         ids=["between-trials", "mid-trial"])
def test_a_storage_locked_mid_study_stops_in_one_line_and_the_study_goes_on(project, mlflow_store, capsys,
                                                                             pause, states):
    """optuna.db locked by another process during a study: Optuna's OperationalError escaped as
    a 150-line traceback (mid-trial ending in Optuna's own UnboundLocalError) and the trial stayed
    RUNNING. Now: one line, exit 2, finished trials kept; the storage still locked, a trial it ran
    stays RUNNING, and the next run on this machine fails and retries it."""
    url = storage_url(project)
    worker = ("import os, sys, time; from emovision import tuning; from stages import tune\n"
              f"tuning.SQLITE_WAIT_S = {SHORT_WAIT_S}\n" + pause +
              f"sys.exit(tune.main(['--params', 'params.yaml', '--n-trials', '3', '--epochs', '2', '--storage', {url!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=project, env=_tune_env(mlflow_store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("paused"):
            break
    with locked(project / "optuna.db"):  # held until the worker has given up
        (project / "locked").touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: stopped: Optuna storage '{url}' is locked by another process") and \
        "finished trials are kept" in err, err
    assert [t.state.name for t in optuna.load_study(study_name="fer-lr-dropout", storage=url).trials] == states
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in [r.info.status for r in runs]
    # the next worker (as `python -m stages.tune` starts) fails a trial left RUNNING and queues its retry
    study = tuning.load_study(load_params("params.yaml").replace(**{"tune.epochs": 2}), tuning.open_storage(url))
    if "RUNNING" in states:
        assert f"trial 1 failed: its worker ({fileio._machine()}.{proc.pid}) is gone" in capsys.readouterr().out
        assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "WAITING"]
        assert study.trials[2].system_attrs["failed_trial"] == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_heartbeat_outlasts_a_locked_storage(tmp_path, monkeypatch):
    """Optuna's heartbeat thread died on the first beat a lock refused, so a long trial beat no
    more and other workers failed and re-ran it while it ran. A refused beat is now skipped."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "SQLITE_WAIT_S", SHORT_WAIT_S)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = tuning.load_study(load_params(REPO / "params.yaml"), tuning.open_storage(url))
    trial = study.ask()
    heartbeat = get_heartbeat_thread(trial._trial_id, study._storage)
    with heartbeat:
        with locked(tmp_path / "optuna.db"):  # long enough for a beat to give up on it
            time.sleep(3 * (SHORT_WAIT_S + tuning.HEARTBEAT_S))
        assert heartbeat._thread.is_alive()


def test_a_journal_study_says_how_to_fail_a_trial_of_a_dead_worker_elsewhere(project, capsys):
    """A journal file has no heartbeat: a trial whose worker died on another machine stays RUNNING.
    The summary says so, with the command that fails it (Optuna's own CLI), which works as printed."""
    url = f"journal:///{project / 'study.log'}"
    study = tuning.load_study(load_params("params.yaml"), tuning.open_storage(url))
    study.ask().set_user_attr(tuning.OWNER_ATTR, "elsewhere.1")  # a worker on another machine, then silence
    assert tune_main(["--params", "params.yaml", "--n-trials", "1", "--storage", url]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint.startswith("running: trial 0; one whose worker died on another machine stays RUNNING"), hint
    program, *args = ["0" if word == "N" else word for word in shlex.split(hint.split(": ", 2)[2])]
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), program), *args],  # the venv's optuna
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="fer-lr-dropout", storage=tuning.open_storage(url)).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]


def test_a_worker_rewriting_the_reports_never_hides_best_params_from_another(project):
    """Workers sharing a study finish together and each rewrites reports/tune. The writer removed
    best_params.json first and wrote it last, after the table and plots, so the other worker's
    read of it (logging it to MLflow) failed: FileNotFoundError, exit 1, in
    test_two_workers_share_a_journal_study on a loaded machine. The set is now replaced together."""
    from stages.tune import write_reports

    url = storage_url(project)
    params = load_params("params.yaml").replace(**{"tune.study_name": "shared"})
    study = tuning.load_study(params, tuning.open_storage(url))
    for lr, acc in ((1e-3, 0.4), (3e-3, 0.5)):
        study.add_trial(optuna.trial.create_trial(params={"train.lr": lr, "model.dropout": 0.2}, value=acc,
                                                  distributions=tuning.search_space(params)))
    rows, out = tuning.trials_table(study), project / "reports" / "tune"
    write_reports(study, rows, out)
    stop, missing = threading.Event(), []

    def rewrite():
        for _ in range(8):
            write_reports(study, rows, out)
        stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    while not stop.is_set():
        try:
            missing += [] if json.loads((out / "best_params.json").read_text())["trial"] == 1 else ["wrong"]
        except FileNotFoundError:
            missing.append("gone")
    writer.join()
    assert missing == []
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_dropout.png", "accuracy_vs_lr.png", "best_params.json",
                                                      "optimization_history.png", "trials.csv"]  # no staging left

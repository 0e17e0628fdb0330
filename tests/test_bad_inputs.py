"""The issue-12 table of bad inputs: each ends in one line naming what and where, exit 2,
and leaves the previous model, reports and MLflow store exactly as they were."""
from __future__ import annotations

import hashlib
import socket
import json
import shutil
from pathlib import Path

import mlflow
import pytest

from emovision import artifact
from emovision.errors import EmovisionError
from emovision.inference import load_classifier
from stages.bench import main as bench_main
from stages.evaluate import main as evaluate_main
from stages.export import main as export_main
from stages.prepare import main as prepare_main
from stages.train import main as train_main
from tests.conftest import write_params


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file under models/ and reports/ (what a bad config must not touch)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("models", "reports") for p in sorted((root / folder).rglob("*")) if p.is_file()}


def run_count() -> int:
    return len(mlflow.search_runs(search_all_experiments=True))


@pytest.fixture(scope="module")
def finished(trained, tmp_path_factory):
    """A copy of the trained demo project, evaluated once: models/ and reports/ complete."""
    root = tmp_path_factory.mktemp("finished") / "proj"
    shutil.copytree(trained, root)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    assert evaluate_main(["--params", "params.yaml"]) == 0
    mp.undo()
    return root


@pytest.fixture
def in_finished(finished, monkeypatch):
    monkeypatch.chdir(finished)
    uri = f"sqlite:///{finished / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return finished


BAD_PARAMS = [  # (params text or overrides, what the one line must say)
    ({"model": {"name": "resnet50"}}, "model.name: unknown model 'resnet50'"),
    ({"train": {"lr": float("inf")}}, "train.lr must be a finite number"),
    ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size must be in [1, 65536]"),
    ({"model": {"width": 4800}}, "model.width must be in [4, 512]"),
    ({"base": {"seed": -1}}, "base.seed must be in [0,"),
    ({"augment": {"scale": 1.5}}, "augment.scale must be in [0, 1)"),
    ({"train": {"warmup_epochs": -5}}, "train.warmup_epochs must be >= 0"),
    ({"train": {"weight_decay": -1}}, "train.weight_decay must be >= 0"),
    ("", "the params file is empty"),
    ("train:\n  epochs: 1\n  epochs: 70\n", "duplicate key 'epochs' at line 3"),
]


@pytest.mark.parametrize("bad, message", BAD_PARAMS)
@pytest.mark.parametrize("stage", [train_main, evaluate_main, bench_main], ids=["train", "evaluate", "bench"])
def test_bad_params_touch_nothing(in_finished, capsys, tmp_path, stage, bad, message):
    before, runs = snapshot(in_finished), run_count()
    path = tmp_path / "bad.yaml"
    if isinstance(bad, str):
        path.write_text(bad)
    else:
        write_params(path, bad)
    assert stage(["--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and "\n" not in err
    assert snapshot(in_finished) == before and run_count() == runs


def test_evaluate_after_a_killed_training_refuses_before_writing(in_finished, capsys):
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_text()
    try:  # what a killed training leaves: run.json written at its start, no registered version
        run_file.write_text(json.dumps({"run_id": json.loads(finished_info)["run_id"]}))
        before, runs = snapshot(in_finished), run_count()
        assert evaluate_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert "models/run.json: the training in models/ did not finish" in err and "\n" not in err
        assert "--resume" in err
        assert snapshot(in_finished) == before and run_count() == runs
    finally:
        run_file.write_text(finished_info)


CORRUPT_RUN_FILES = [  # (run.json text, what the one line must say)
    ('{"run_id": "ab', "models/run.json is not valid JSON (line 1, column 12)"),
    ("[]", "models/run.json is not a training record (no run_id)"),
    (b"\xff\xfe", "models/run.json cannot be read (UnicodeDecodeError)"),
]
RUN_FILE_STAGES = {  # every entry point that reads run.json, as dvc.yaml runs it
    "train": (train_main, ["--auto-resume", "--export-onnx"]), "evaluate": (evaluate_main, []),
    "bench": (bench_main, []), "export": (export_main, [])}


@pytest.mark.parametrize("text, message", CORRUPT_RUN_FILES, ids=["truncated", "not-a-record", "not-utf8"])
@pytest.mark.parametrize("stage", list(RUN_FILE_STAGES))
def test_a_corrupt_run_file_stops_every_stage_before_writing(in_finished, capsys, stage, text, message):
    main, flags = RUN_FILE_STAGES[stage]
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_bytes()
    try:
        run_file.write_bytes(text if isinstance(text, bytes) else text.encode())
        before, runs = snapshot(in_finished), run_count()
        assert main(["--params", "params.yaml", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "python -m stages.train" in err and "\n" not in err, err
        assert snapshot(in_finished) == before and run_count() == runs
    finally:
        run_file.write_bytes(finished_info)


def test_evaluate_without_a_run_file_refuses_before_writing(in_finished, capsys):
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_bytes()
    try:
        run_file.unlink()
        before, runs = snapshot(in_finished), run_count()
        assert evaluate_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert "no trained model in models/: models/run.json is missing" in err and "\n" not in err
        assert snapshot(in_finished) == before and run_count() == runs
    finally:
        run_file.write_bytes(finished_info)


def test_resume_without_an_interrupted_run_is_refused(in_finished, capsys):
    before = snapshot(in_finished)
    assert train_main(["--params", "params.yaml", "--resume"]) == 2
    assert "cannot --resume: the run in models/ finished" in capsys.readouterr().err
    assert snapshot(in_finished) == before


def test_non_finite_loss_stops_with_a_failed_run(in_tmp, mlflow_store, capsys):
    params = write_params(in_tmp / "params.yaml", {"train": {"epochs": 3, "lr": 1e30, "warmup_epochs": 0.0}})
    assert prepare_main(["--params", str(params)]) == 0
    assert train_main(["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert "the training loss became nan in epoch 1" in err and "lower train.lr" in err and "\n" not in err
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]
    assert mlflow.MlflowClient().search_registered_models() == []  # nothing registered
    assert not (in_tmp / "models" / "best.pt").exists()


def test_auto_resume_continues_only_an_unfinished_run_of_the_same_params(in_finished):
    from emovision.config import load_params
    from stages.train import interrupted_run

    params = load_params("params.yaml").for_dataset("synthetic")
    models = in_finished / "models"
    run_file = models / "run.json"
    info = run_file.read_text()
    assert interrupted_run(params, models) == (None, f"the run in {models}/ finished (registered as version 1)")
    try:
        run_file.write_text(json.dumps({"run_id": json.loads(info)["run_id"]}))  # killed mid-training
        run_id, why = interrupted_run(params, models)
        assert run_id == json.loads(info)["run_id"] and why.startswith("resuming the interrupted run")
        changed = params.replace(**{"train.lr": params.train.lr * 2})
        run_id, why = interrupted_run(changed, models)
        assert run_id is None and "was trained with other params (train.lr)" in why
        assert interrupted_run(params.replace(**{"bench.repeats": 9}), models)[0] is not None  # not training
        # threads change speed, not what is learned: a run killed on a busy machine continues with fewer
        assert interrupted_run(params.replace(**{"train.threads": params.train.threads + 1}), models)[0] is not None
        # the same params on other data (a re-cut data/app_views.npz, re-run teachers): start over
        saved = {k: v for k, v in artifact.read_checkpoint(models / "last.pt")["params"].items()
                 if k.startswith("inputs.")}
        assert "inputs.train" in saved and interrupted_run(params, models, saved)[0] is not None
        run_id, why = interrupted_run(params, models, {**saved, "inputs.train": "0" * 16})
        assert run_id is None and "was trained with other data (inputs.train)" in why
        # the run deleted in `mlflow ui`: the same decision refuses it, in the same words as
        # evaluate and bench (tracking.recorded_run_problem)
        client, recorded = mlflow.MlflowClient(), json.loads(info)["run_id"]
        client.delete_run(recorded)
        try:
            assert interrupted_run(params, models) == (
                None, f"{models}/run.json names MLflow run {recorded}, which was deleted in MLflow "
                      f"(`mlflow ui` can restore it)")
        finally:
            client.restore_run(recorded)
    finally:
        run_file.write_text(info)


@pytest.mark.parametrize("stage", list(RUN_FILE_STAGES))
def test_a_store_that_is_not_sqlite_stops_every_stage_before_writing(in_finished, capsys, stage):
    """A damaged mlflow.db used to cost train the previous best.pt/last.pt (deleted before
    MLflow raised its traceback) and evaluate a rewritten reports/ for a run never logged."""
    main, flags = RUN_FILE_STAGES[stage]
    store = in_finished / "mlflow.db"
    good = store.read_bytes()
    before = snapshot(in_finished)
    try:
        store.write_bytes(b"not a database\n" * 100)
        assert main(["--params", "params.yaml", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert f"MLflow store {store} is not an SQLite database" in err and "\n" not in err, err
        assert snapshot(in_finished) == before
        with pytest.raises(EmovisionError, match="is not an SQLite database"):  # models:/ readers too
            load_classifier("models:/fer/Production", "cpu")
    finally:
        store.write_bytes(good)


@pytest.mark.parametrize("stage", ["evaluate", "bench", "export"])
def test_a_store_without_the_recorded_run_stops_the_stage_before_writing(in_finished, capsys, monkeypatch,
                                                                          migrated_mlflow_db, tmp_path, stage):
    """mlflow.db deleted to start afresh (or another MLFLOW_TRACKING_URI): run.json's run is not
    in the store. evaluate and bench rewrote reports/, export fer.onnx, then ended in MLflow's
    traceback `Run with id=... not found`; `dvc repro` itself finds nothing to do, so the line
    says how to train again."""
    main, flags = RUN_FILE_STAGES[stage]
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    before = snapshot(in_finished)
    assert main(["--params", "params.yaml", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert f"which is not in the store sqlite:///{store}" in err and "dvc repro -f --downstream train" in err, err
    assert "\n" not in err and snapshot(in_finished) == before


def test_evaluate_after_a_killed_training_whose_run_is_not_in_the_store_says_so(in_finished, capsys, monkeypatch,
                                                                                migrated_mlflow_db, tmp_path):
    """A training killed before it registered, then mlflow.db deleted: evaluate advised
    `python -m stages.train --resume`, which refuses a run the store does not hold. It now names
    the missing run and the two ways out: the store that holds it, or training again."""
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_text()
    run_id = json.loads(finished_info)["run_id"]
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, store)  # what MLflow makes where mlflow.db was deleted
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    try:
        run_file.write_text(json.dumps({"run_id": run_id}))  # what a killed training leaves
        before = snapshot(in_finished)
        assert evaluate_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: models/run.json names MLflow run {run_id}, which is not in the store "
                       f"sqlite:///{store} (a new or another store: if another holds it, set MLFLOW_TRACKING_URI "
                       f"to that one); or train again with `dvc repro -f --downstream train` (train, evaluate "
                       f"and bench)"), err
        assert snapshot(in_finished) == before
    finally:
        run_file.write_text(finished_info)


def test_an_interrupted_training_whose_run_is_not_in_the_store_starts_over(in_finished, capsys, monkeypatch,
                                                                           migrated_mlflow_db, tmp_path):
    """A training interrupted, then mlflow.db deleted: every `dvc repro` tried to resume the run
    in the new store and ended in MLflow's traceback. --auto-resume now starts a new run;
    --resume refuses in one line."""
    saved = tmp_path / "saved"
    for folder in ("models", "reports"):
        shutil.copytree(in_finished / folder, saved / folder)
    run_file = in_finished / "models" / "run.json"
    run_id = json.loads(run_file.read_text())["run_id"]
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    try:  # what an interrupted training leaves: run.json without a registered version, last.pt
        run_file.write_text(json.dumps({"run_id": run_id}))
        before = snapshot(in_finished)
        assert train_main(["--params", "params.yaml", "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot --resume: models/run.json names MLflow run {run_id}, which is not in the store" in err
        assert "\n" not in err and snapshot(in_finished) == before
        assert train_main(["--params", "params.yaml", "--auto-resume"]) == 0
        assert f"starting a new run (models/run.json names MLflow run {run_id}" in capsys.readouterr().out
        assert json.loads(run_file.read_text())["run_id"] != run_id and run_count() == 1
    finally:
        for folder in ("models", "reports"):
            shutil.rmtree(in_finished / folder)
            shutil.copytree(saved / folder, in_finished / folder)


def test_export_of_a_logged_model_missing_from_the_store_stops_before_writing(in_finished, capsys):
    """run.json's logged model deleted in MLflow: export wrote fer.onnx, then ended in MLflow's
    traceback `Logged model with ID ... not found` when it logged the file with it."""
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_text()
    try:
        run_file.write_text(json.dumps({**json.loads(finished_info), "model_id": "m-0123456789abcdef"}))
        before, runs = snapshot(in_finished), run_count()
        assert export_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert "models/run.json names MLflow logged model m-0123456789abcdef, which is not in the store" in err
        assert "\n" not in err and snapshot(in_finished) == before and run_count() == runs, err
    finally:
        run_file.write_text(finished_info)


def test_evaluate_of_a_version_deleted_from_the_registry_stops_before_writing(in_finished, capsys):
    run_file = in_finished / "models" / "run.json"
    finished_info = run_file.read_text()
    try:  # as after deleting the version in `mlflow ui`
        run_file.write_text(json.dumps({**json.loads(finished_info), "model_version": "99"}))
        before, runs = snapshot(in_finished), run_count()
        assert evaluate_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert "models/run.json names fer v99, which is not in the registry" in err and "\n" not in err, err
        assert snapshot(in_finished) == before and run_count() == runs
    finally:
        run_file.write_text(finished_info)


@pytest.mark.parametrize("stage", list(RUN_FILE_STAGES))
def test_a_tracking_server_that_is_down_stops_every_stage_before_writing(in_finished, capsys, monkeypatch, stage):
    """MLFLOW_TRACKING_URI naming a server that does not answer: one line, and train keeps the
    previous best.pt/last.pt (they were deleted before MLflow's traceback)."""
    main, flags = RUN_FILE_STAGES[stage]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    before = snapshot(in_finished)
    assert main(["--params", "params.yaml", *flags]) == 2
    err = capsys.readouterr().err.strip()
    down = f"MLflow tracking server http://127.0.0.1:{port} does not answer (Connection refused)"
    assert down in err and "\n" not in err, err
    assert snapshot(in_finished) == before
    with pytest.raises(EmovisionError) as refused:  # the app's models:/ reference: unknown, not "empty"
        load_classifier("models:/fer/Production", "cpu")
    assert down in str(refused.value)
    assert "registry is empty" not in str(refused.value)


def test_a_stage_names_itself_as_it_is_run(tmp_path):
    """`python -m stages.tune --n-trials x` answered 'usage: tune.py ...' and 'tune.py: error: ...':
    no command a user can type (the stages are run as modules). The usage now names the command."""
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", "stages.tune", "--n-trials", "x"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m stages.tune [-h]"), done.stderr
    assert "python -m stages.tune: error: argument --n-trials: invalid int value: 'x'" in done.stderr

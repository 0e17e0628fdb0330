"""The train stage against a real MLflow SQLite store: metrics, registry, checkpoints, resume."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import torch

from emovision import artifact
from emovision.artifact import read_checkpoint as load_checkpoint
from emovision.inference import load_classifier
from emovision.onnx_backend import export_onnx
from stages.prepare import main as prepare_main
from stages.train import main as train_main
from tests.conftest import REPO, write_params

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")


@pytest.fixture
def project(in_tmp, mlflow_store):
    """A temp project root with prepared tiny demo data and a params file."""
    params = write_params(in_tmp / "params.yaml", {"train": {"epochs": 2}})
    assert prepare_main(["--params", str(params)]) == 0
    return in_tmp


def test_train_logs_registers_and_checkpoints(project):
    assert train_main(["--params", "params.yaml"]) == 0
    info = json.loads((project / "models" / "run.json").read_text())
    client = mlflow.MlflowClient()
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["dataset.source"] == "synthetic"
    assert run.data.tags["dataset"] == "synthetic"
    # what it learned from, by digest, as its checkpoints record it (resume compares them)
    saved = artifact.read_checkpoint(project / "models" / "last.pt")["params"]
    assert run.data.params["inputs.train"] == saved["inputs.train"] and len(saved["inputs.train"]) == 16
    # the precision train.amp: auto chose, and why, on the run
    assert run.data.tags["amp"] in ("fp32", "bf16") and run.data.params["train.amp_resolved"] == run.data.tags["amp"]
    assert run.data.tags["amp_reason"].startswith(run.data.tags["amp"])
    for name in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(info["run_id"], name)]
        assert steps == [1, 2], name
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"training_curves.png", "train_history.csv"} <= artifacts
    # MLflow 3: the model is a logged model of the run, carrying its metrics, and the version's source
    logged = client.get_logged_model(info["model_id"])
    assert logged.source_run_id == info["run_id"] and logged.name == "model"
    assert {m.key for m in logged.metrics} >= {"best_val_acc", "best_val_acc_tta"}
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"demo (synthetic faces) train", "demo (synthetic faces) val", "demo (synthetic faces) test"}
    assert json.loads(inputs["demo (synthetic faces) train"].dataset.profile)["features_shape"][0] == 140
    version = client.get_model_version("fer", info["model_version"])
    assert version.tags["dataset"] == "synthetic" and float(version.tags["val_acc"]) >= 0
    # one accuracy per split: the tags are the best epoch's, from the same scoring function
    best_metrics = load_checkpoint(project / "models" / "best.pt")["metrics"]
    for name in ("val_acc", "val_acc_tta"):
        assert version.tags[name] == f"{best_metrics[name]:.4f}", name

    # The checkpoint is self-describing and reloads without unpickling code.
    ckpt = load_checkpoint(project / "models" / "best.pt")
    assert ckpt["arch"] == "cnn_small" and ckpt["classes"][3] == "happy" and "preprocess" in ckpt
    assert ckpt["weights"] == "ema" and load_checkpoint(project / "models" / "last.pt")["weights"] == "live"
    model = artifact.build(*artifact.load_checkpoint(project / "models" / "best.pt"))
    registered = load_classifier(f"models:/fer/{info['model_version']}", device="cpu")
    served = registered.model.state_dict()  # the registry serves exactly the checkpoint's weights
    assert model.state_dict().keys() == served.keys()
    assert all(torch.equal(value, served[key]) for key, value in model.state_dict().items())
    faces = np.random.default_rng(0).integers(0, 256, (3, 60, 50), dtype=np.uint8)
    np.testing.assert_array_equal(load_classifier("models/best.pt", "cpu").predict_proba(faces),
                                  registered.predict_proba(faces))


def _history(project):
    return (project / "reports" / "train_history.csv").read_text().splitlines()


def test_resume_after_kill_matches_uninterrupted_run(project, mlflow_store):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO)}
    write_params(project / "params.yaml", {"train": {"epochs": 4}, "data": {"synthetic_train_per_class": 60}})
    assert train_main(["--params", "params.yaml"]) == 0
    uninterrupted = _history(project)
    shutil.rmtree(project / "models")  # else the finished run's last.pt (epoch 4) ends the wait at once
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once epoch 2 is checkpointed
        last = project / "models" / "last.pt"
        if last.is_file():
            try:
                if load_checkpoint(last)["epoch"] >= 2:
                    break
            except Exception:
                pass  # caught mid-replace; try again
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_done = load_checkpoint(project / "models" / "last.pt")["epoch"]
    assert 2 <= epoch_done <= 4
    out = subprocess.run([sys.executable, "-m", "stages.train", "--resume"], cwd=project, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resuming from models/last.pt after epoch {epoch_done}" in out.stdout
    assert "KILLED" not in out.stdout  # the run it continues is not ended by the store's sweep first
    resumed = _history(project)
    # Same seed, restored RNG and optimizer state: the same epochs with the same numbers
    # (images/s and epoch time are wall-clock and differ).
    wall_clock = ("images_per_s", "epoch_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in wall_clock} for r in csv.DictReader(rows)]  # noqa: E731
    assert strip(resumed) == strip(uninterrupted) and len(strip(resumed)) == 4


def test_epoch_lines_and_quiet(project, capsys):
    assert train_main(["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "epoch   2/2" in out and "mixed precision: " in out
    assert train_main(["--params", "params.yaml", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" not in out and "registered fer version 2" in out


def test_the_training_line_counts_the_images_an_epoch_uses(project, capsys):
    """With train.max_train_images 100 of 140 demo faces the line said '140 train': an epoch
    uses 100 (a new random 100 each epoch)."""
    write_params(project / "params.yaml", {"train": {"epochs": 1, "max_train_images": 100}})
    assert train_main(["--params", "params.yaml", "--quiet"]) == 0
    assert ("training cnn_small on synthetic (a random 100 of 140 train images each epoch: "
            "train.max_train_images / 28 val) on cpu") in capsys.readouterr().out
    write_params(project / "params.yaml", {"train": {"epochs": 1, "max_train_images": 140}})  # no cap in effect
    assert train_main(["--params", "params.yaml", "--quiet"]) == 0
    assert "training cnn_small on synthetic (140 train / 28 val) on cpu" in capsys.readouterr().out


def test_bad_params_fail_clearly(project, capsys):
    write_params(project / "params.yaml", {"model": {"name": "resnet_huge"}})
    assert train_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet_huge'" in err and "cnn_small" in err


def test_missing_prepared_data(in_tmp, mlflow_store, capsys):
    write_params(in_tmp / "params.yaml")
    assert train_main(["--params", "params.yaml"]) == 2
    assert "run `python -m stages.prepare` first" in capsys.readouterr().err


def test_weight_ema_warms_up():
    """Early on the average follows the live model closely (decay (1+t)/(10+t)); it never
    decays faster than that nor slower than `decay`."""
    from torch import nn

    from emovision.training import ModelEma

    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.9)
    expected = 0.0
    for step in range(1, 101):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update(model)
        keep = min(0.9, (1 + step) / (10 + step))
        expected = keep * expected + (1 - keep) * step
        assert torch.allclose(ema.module.weight, torch.full_like(model.weight, expected), atol=1e-3)
    assert ema.updates == 100 and (1 + 100) / (10 + 100) > 0.9  # the plain EMA by now
    assert 100 - expected < 12  # lags the live weights by about 1 / (1 - decay) steps, not the whole run


def test_resume_after_changing_the_model_width_is_refused_before_anything_is_touched(project, capsys):
    """A killed training (run.json names its run, no registered version yet) and then
    `--resume` with another model.width: one line, exit 2, files and the MLflow run as they were."""
    assert train_main(["--params", "params.yaml"]) == 0
    models = project / "models"
    info = json.loads((models / "run.json").read_text())
    (models / "run.json").write_text(json.dumps({"run_id": info["run_id"]}))  # what a kill leaves
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    status = mlflow.MlflowClient().get_run(info["run_id"]).info.status
    write_params(project / "params.yaml", {"train": {"epochs": 2}, "model": {"width": 16}})
    capsys.readouterr()
    assert train_main(["--params", "params.yaml", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot --resume" in err and "model.width" in err
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
    assert mlflow.MlflowClient().get_run(info["run_id"]).info.status == status
    assert len(mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("emovision").experiment_id])) == 1


def test_resume_without_a_checkpoint_is_refused_before_the_store_is_opened(project, mlflow_store, capsys):
    """`--resume` in a project that never trained: the store was opened before the decision,
    so the refusal first made a new mlflow.db (seconds of migrations) in a fresh project."""
    (project / "mlflow.db").unlink()  # mlflow_store's copy of an empty store: here there is none yet
    assert train_main(["--params", "params.yaml", "--resume"]) == 2
    assert "cannot --resume: no interrupted run in models/" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()


def _first_conv(path) -> torch.Tensor:
    _, state = artifact.load_checkpoint(path)
    return next(v for k, v in state.items() if k.endswith("weight") and v.dim() == 4).float()


def test_training_starts_from_train_init(project, capsys):
    """train.init: the run starts from that model's weights (a fine-tune), says so in MLflow;
    on the demo set only with demo.init, since params.yaml names a FER2013 model."""
    write_params(project / "params.yaml", {"base": {"seed": 7}})  # other weights than seed 42's init
    assert train_main(["--params", "params.yaml"]) == 0
    shutil.copy(project / "models" / "best.pt", project / "start.pt")
    start = _first_conv(project / "start.pt")
    # a learning rate too small to move the weights: the new model is the one it started from
    still = {"train": {"epochs": 1, "lr": 1e-9, "init": "start.pt"}}
    write_params(project / "params.yaml", {**still, "demo": {"init": True}})
    assert train_main(["--params", "params.yaml"]) == 0
    torch.testing.assert_close(_first_conv(project / "models" / "best.pt"), start, atol=1e-4, rtol=0)
    run = mlflow.MlflowClient().get_run(json.loads((project / "models" / "run.json").read_text())["run_id"])
    assert run.data.tags["init"] == "start.pt" and len(run.data.tags["init_digest"]) == 16
    assert run.data.params["train.init"] == "start.pt"
    # without demo.init the demo set starts from random weights, and says so
    write_params(project / "params.yaml", still)
    capsys.readouterr()
    assert train_main(["--params", "params.yaml"]) == 0
    assert "train.init off (demo.init" in capsys.readouterr().out
    assert (_first_conv(project / "models" / "best.pt") - start).abs().max() > 0.1


@pytest.mark.parametrize("init, expected", [
    ("nosuch.pt", "model 'nosuch.pt' not found"),
    ("pretrained", "has model args {'width': 48"),  # the shipped w48 into the tiny w8
    ("params.yaml", "train.init 'params.yaml'"),  # not a model at all
    ("fer.onnx", "fer.onnx: an ONNX export, with no PyTorch weights"),  # was: 'an exported ONNX model loads from a .onnx name'
])
def test_a_bad_train_init_is_refused_before_anything_is_touched(project, capsys, init, expected):
    (project / "models").mkdir()
    (project / "models" / "best.pt").write_bytes(b"the previous model")
    if init == "fer.onnx":
        export_onnx(*artifact.load_model_dir(artifact.WEIGHTS_DIR), project / init)
    write_params(project / "params.yaml", {"train": {"init": init}, "demo": {"init": True}})
    capsys.readouterr()
    assert train_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.init" in err and expected in err, err
    assert (project / "models" / "best.pt").read_bytes() == b"the previous model"
    experiment = mlflow.get_experiment_by_name("emovision")  # no run was started
    assert experiment is None or not mlflow.MlflowClient().search_runs([experiment.experiment_id])


def test_a_train_init_the_demo_cap_makes_another_shape_says_so(project, capsys):
    """With demo.init, the shipped w48 model was refused on the demo set as `params.yaml trains
    {'width': 32, ...}`, while params.yaml said 48: demo.width had capped it, unsaid."""
    write_params(project / "params.yaml", {"train": {"init": "pretrained"}, "model": {"width": 48},
                                           "demo": {"init": True, "width": 32}})
    capsys.readouterr()
    assert train_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "params.yaml trains" not in err, err
    assert "this training builds {'width': 32" in err and "demo.width 32 caps model.width 48" in err, err


def _snapshot(folder):
    """The folder's files, less the hidden temporaries of a save in progress (.last.pt.*.partial)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def test_a_second_training_is_refused_and_a_killed_run_not_resumed_is_marked_killed(project, mlflow_store, capsys):
    """Two `python -m stages.train` at once: the second deleted the first's best.pt/last.pt,
    and each registered whatever best.pt the other had written last. It now stops in one
    line before touching models/, and the lock goes with the first (kill -9 included).
    kill -9 leaves the MLflow run RUNNING; --auto-resume continues it, but when the params
    changed the next training starts over and the killed run stayed RUNNING forever.
    (Both were two tests, each starting and killing its own 50-epoch training: one serves.)"""
    write_params(project / "params.yaml", {"train": {"epochs": 50}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    models = project / "models"
    first = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # epoch 2's line: epoch 1 is checkpointed
            if line.startswith("epoch   2/"):
                break
        before = _snapshot(models)
        assert train_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        # named by its PID: a `kill` of dvc's own PID ends dvc, and the stage it ran trains on unseen
        assert err == (f"error: another training is running in models/ (PID {first.pid}: {sys.executable} -m "
                       f"stages.train); wait for it to end or stop it (kill {first.pid}), then run this again")
        assert {"last.pt", "best.pt", "run.json"} <= set(before)
        after = _snapshot(models)  # the first may have saved another epoch meanwhile; nothing was deleted
        assert set(after) == set(before) and after["run.json"] == before["run.json"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed = json.loads((models / "run.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(killed).info.status == "RUNNING"
    # the lock died with the first: a training starts (a new 2-epoch one, its params changed;
    # resuming the first would train its 48 epochs left, and takes the same lock)
    write_params(project / "params.yaml", {"train": {"epochs": 2, "lr": 0.002}})
    assert train_main(["--params", "params.yaml", "--auto-resume"]) == 0
    assert f"the interrupted run {killed} is not continued: marked KILLED" in capsys.readouterr().out
    assert client.get_run(killed).info.status == "KILLED"
    new = json.loads((models / "run.json").read_text())["run_id"]
    assert new != killed and client.get_run(new).info.status == "FINISHED"


def test_ctrl_c_during_the_onnx_export_does_not_cost_the_training(project, mlflow_store):
    """`dvc repro` interrupted in train's last step (the ONNX export, after registration):
    the next `dvc repro` found a finished run, trained it all again and registered the same
    weights a second time. Now it exports the registered model and trains nothing."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "stages.train", "--auto-resume", "--export-onnx"]
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("best val_acc"):  # registered; the export follows
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    models = project / "models"
    assert json.loads((models / "run.json").read_text())["onnx_export_pending"] is True
    assert not (models / "fer.onnx").exists()
    best = (models / "best.pt").read_bytes()
    out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "only its ONNX export was interrupted: exporting it, not training again" in out.stdout
    assert not [l for l in out.stdout.splitlines() if l.startswith("epoch")] and (models / "fer.onnx").is_file()
    assert (models / "best.pt").read_bytes() == best
    info = json.loads((models / "run.json").read_text())
    assert "onnx_export_pending" not in info and info["model_version"] == "1"
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name='fer'")] == ["1"]


def test_a_run_killed_after_registering_is_not_registered_twice(project):
    """kill -9 between registering best.pt and recording the version in run.json: the resumed
    run had nothing left to train and registered the same weights as a second version."""
    assert train_main(["--params", "params.yaml"]) == 0
    run_file = project / "models" / "run.json"
    finished = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({"run_id": finished["run_id"]}))  # what that kill leaves
    assert train_main(["--params", "params.yaml", "--auto-resume"]) == 0
    client = mlflow.MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name='fer'")] == ["1"]
    info = json.loads(run_file.read_text())
    assert (info["run_id"], info["model_version"], info["model_id"]) == (
        finished["run_id"], "1", finished["model_id"])
    assert client.get_run(info["run_id"]).info.status == "FINISHED"


def test_a_ctrl_c_while_a_reopened_run_is_tidied_ends_the_run(in_tmp, mlflow_store, monkeypatch):
    """tracked_run reopens a resumed training's run and fails the models it left PENDING; a
    Ctrl-C (or a store error) there left the run RUNNING and active in this process."""
    from emovision import tracking

    tracking.setup()  # this store's experiment (an earlier test in the process set another)
    with tracking.tracked_run(run_name="first") as run:
        run_id = run.info.run_id
    tidy = tracking.fail_pending_models

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(tracking, "fail_pending_models", tidy)  # the except's own tidying runs
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "fail_pending_models", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run(run_id=run_id):
            pass
    assert mlflow.active_run() is None and mlflow.get_run(run_id).info.status == "KILLED"

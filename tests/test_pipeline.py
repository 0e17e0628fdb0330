"""End to end: `dvc repro` in a temp git repo, evaluation outputs and the promotion gate."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlflow
import pytest
import yaml

from emovision.training import cpu_has_bf16
from stages.evaluate import main as evaluate_main
from stages.prepare import main as prepare_main
from stages.promote import main as promote_main
from stages.train import main as train_main
from tests.conftest import REPO, TINY, write_params

PROJECT_FILES = ["stages", "emovision", "dvc.yaml", "teachers", "pyproject.toml", ".gitignore", ".dvcignore",
                 "data/raw/.gitkeep"]


def skip_shipped_model(folder: str, names: list[str]) -> list[str]:
    """copytree filter: no caches and not the shipped FER model (the pipeline trains its own);
    the face detector's weights (emovision/weights/mtcnn) are code the app and bench run."""
    shipped = Path(folder) == REPO / "emovision" / "weights"
    return [n for n in names if n == "__pycache__" or (shipped and n in ("weights.pt", "config.json"))]


def copy_project(dst: Path) -> Path:
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=skip_shipped_model)
        else:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst / name)
    return dst


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def versions(name="fer"):
    return {str(v.version): v for v in mlflow.MlflowClient().search_model_versions(f"name='{name}'")}


def champion(name="fer"):
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)


def production(name="fer"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [str(v.version) for v in mlflow.MlflowClient().get_latest_versions(name, stages=["Production"])]


def test_dvc_repro_end_to_end(tmp_path, mlflow_store):
    repo = copy_project(tmp_path / "proj")
    write_params(repo / "params.yaml", base=TINY)
    # the full params file keeps every key (DVC tracks exact keys); tiny values on top
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        full[section].update(values)
    full["train"]["max_train_images"] = 100  # of the demo set's 140: bench's epoch estimate counts 100
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")

    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"check", "prepare", "teach", "recrop", "train", "evaluate", "bench"}
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 1
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"test_acc", "test_f1", "val_acc", "val_f1"} and 0 <= metrics["test_acc"] <= 1
    details = json.loads((repo / "reports" / "evaluation.json").read_text())
    assert details["test"]["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-4)
    assert set(json.loads((repo / "reports" / "speed.json").read_text())) == {"lat_ms", "fps", "train_ips"}
    bench = json.loads((repo / "reports" / "bench.json").read_text())
    assert bench["train"]["images_per_s_augmented"] > 0
    assert bench["train"]["images_per_s_fp32"] > 0
    assert bench["train"]["est_epoch_s"] * bench["train"]["images_per_s_augmented"] == pytest.approx(100)
    # bf16 is timed only where oneDNN can run it (an AVX2 CI machine writes null)
    bf16_ips = bench["train"]["images_per_s_bf16"]
    assert bf16_ips > 0 if cpu_has_bf16() else bf16_ips is None
    assert bench["train"]["amp_auto"] in ("fp32", "bf16") and bench["train"]["amp_auto_reason"]
    assert (repo / "reports" / "confusion_matrix.png").stat().st_size > 1000
    v = versions()
    assert list(v) == ["1"] and champion() == "1" and production() == ["1"]

    again = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr
    assert list(versions()) == ["1"]  # nothing re-ran

    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=repo, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "test_acc" in shown.stdout and "per_class" not in shown.stdout

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)

    # a change to the code that computes the metrics makes evaluate stale (and what imports it)
    inference = repo / "emovision" / "inference.py"
    original = inference.read_text()
    inference.write_text(original + "\n# a change\n")
    stale = json.loads(dvc("status", "--json").stdout)
    assert {"train", "evaluate", "bench"} <= set(stale) and "prepare" not in stale
    inference.write_text(original)
    assert json.loads(dvc("status", "--json").stdout) == {}

    # a failed `dvc repro` (a bad value of a param train reads) destroys nothing
    kept = {p: p.read_bytes() for p in [repo / "models" / "best.pt", repo / "models" / "run.json",
                                        *sorted((repo / "reports").glob("*"))]}
    good = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(good.replace("weight_decay: 0.05", "weight_decay: -1"))
    failed = dvc("repro")
    assert failed.returncode != 0 and "train.weight_decay must be >= 0, got -1.0" in failed.stdout + failed.stderr
    assert {p: p.read_bytes() for p in kept} == kept and list(versions()) == ["1"]
    # evaluate's reports too: DVC deleted them before evaluate could refuse a param only it reads
    (repo / "params.yaml").write_text(good.replace("min_delta: 0.002", "min_delta: 2.0"))
    failed = dvc("repro")
    assert failed.returncode != 0 and "registry.min_delta must be in [0, 1)" in failed.stdout + failed.stderr
    assert {p: p.read_bytes() for p in kept if p.exists()} == kept
    (repo / "params.yaml").write_text(good)

    # the results as a user commits them, so the experiment below compares with a baseline
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline results")
    baseline = json.loads((repo / "reports" / "metrics.json").read_text())
    # DVC writes -S values with ruamel (YAML 1.2): 3e-05 must read as a float
    exp = dvc("exp", "run", "-n", "lr-3e-5", "-S", "train.lr=3e-5", "-S", "train.epochs=1")
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "lr: 3e-05" in (repo / "params.yaml").read_text()
    assert sorted(versions()) == ["1", "2"]
    run = mlflow.get_run(json.loads((repo / "models" / "run.json").read_text())["run_id"])
    assert float(run.data.params["train.lr"]) == 3e-5 and run.data.tags.get("dvc_exp_name")

    # two experiments side by side in a 120-column terminal: every metric and the changed
    # param readable; only the models/ hash (a dependency of evaluate and bench) may be
    # collapsed to "…" at the end of the row
    table = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--no-pager"],
                           cwd=repo, env={**env, "COLUMNS": "120"}, capture_output=True, text=True)
    print(table.stdout)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and max(map(len, lines)) <= 120, table.stdout
    header = next(line for line in lines if "Experiment" in line)
    # --only-changed rightly hides a column whose value is the same in both runs (speed
    # figures that round alike; a 1-epoch demo model's accuracy can coincide too): every
    # metric that changed must be shown, with the experiment's value in its row
    exp_metrics = json.loads((repo / "reports" / "metrics.json").read_text())  # exp run leaves its results
    changed = {k: v for k, v in exp_metrics.items() if v != baseline[k]}
    assert changed, (baseline, exp_metrics)  # lr 3e-5 against the default trains another model
    for column in (*changed, "train.lr"):
        assert column in header, table.stdout
    row = next(line for line in lines if "[lr-3e-5]" in line)
    assert all(str(value) in row for value in changed.values()) and "3e-05" in row, table.stdout
    assert "…" not in row.rstrip().rstrip("…"), table.stdout



def test_a_failed_dvc_repro_deletes_no_data(tmp_path):
    """DVC deletes a stage's outputs before running it unless they persist, so before prepare
    can refuse a bad param its data/prepared was gone, and a `data.prepared_dir` naming a
    folder of the user's lost that folder, which prepare exists to refuse."""
    repo = copy_project(tmp_path / "proj")
    full = yaml.safe_load((REPO / "params.yaml").read_text())  # DVC tracks the exact keys
    full["data"]["synthetic_train_per_class"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)

    def repro_prepare(**data) -> subprocess.CompletedProcess:
        params = yaml.safe_load(yaml.safe_dump(full))
        params["data"].update(data)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=repo, env=env,
                              capture_output=True, text=True)

    done = repro_prepare()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    prepared = {p.name: p.read_bytes() for p in (repo / "data" / "prepared").iterdir()}
    assert repro_prepare(on_bad_row="drop").returncode != 0
    assert {p.name: p.read_bytes() for p in (repo / "data" / "prepared").iterdir()} == prepared
    mine = repo / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own")
    (repo / "notes.txt").write_text("the user's own")
    refused = repro_prepare(prepared_dir="mine")
    assert refused.returncode != 0 and "holds files prepare did not write" in refused.stdout + refused.stderr
    assert (mine / "notes.txt").read_text() == "the user's own"
    # a file of the user's: DVC used to delete it; prepare replaced it with a folder, hiding it
    refused = repro_prepare(prepared_dir="notes.txt")
    assert refused.returncode != 0 and "data.prepared_dir notes.txt is a file" in refused.stdout + refused.stderr
    assert (repo / "notes.txt").read_text() == "the user's own"


@pytest.fixture
def project(in_tmp, mlflow_store):
    return in_tmp


def train_and_evaluate(params_overrides: dict, raw_dir: str | None = None, prepare: bool = True) -> dict:
    """`prepare=False`: the data params are those of the last call, so data/prepared is already
    theirs (prepare would write the same bytes again)."""
    # Enough steps (no augmentation) for a small model to learn the demo set well above chance.
    overrides = {"model": {"width": 16, "dropout": 0.0},
                 "train": {"epochs": 6, "batch_size": 32, "patience": 0, "weight_decay": 0.0},
                 "augment": {"hflip": False, "rotation": 0.0, "scale": 0.0, "translate": 0.0, "erasing": 0.0},
                 "data": {"synthetic_train_per_class": 100}}
    for section, values in params_overrides.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    if raw_dir:
        overrides["data"]["raw_dir"] = raw_dir
    write_params(Path("params.yaml"), overrides)
    if prepare:
        assert prepare_main(["--params", "params.yaml"]) == 0
    assert train_main(["--params", "params.yaml"]) == 0
    assert evaluate_main(["--params", "params.yaml"]) == 0
    return json.loads(Path("models/run.json").read_text())


def test_promotion_gate(project, capsys):
    # v1: trained normally -> first champion
    first = train_and_evaluate({})
    assert champion() == first["model_version"] == "1"
    acc1 = float(versions()["1"].tags["val_acc_tta"])
    # the gate selects on val (PublicTest), never on test (PrivateTest)
    assert acc1 == pytest.approx(json.loads(Path("reports/metrics.json").read_text())["val_acc"], abs=1e-4)
    assert acc1 > 0.3  # well above chance (1/7) on the demo set
    # v2: learning rate so small it cannot learn -> worse, not promoted
    train_and_evaluate({"train": {"epochs": 1, "lr": 1e-7, "warmup_epochs": 0.0}}, prepare=False)
    v2 = versions()["2"]
    assert v2.tags["promotion"] == "rejected" and champion() == "1"
    assert float(v2.tags["champion_val_acc_tta"]) == pytest.approx(acc1, abs=1e-4)
    # forced promotion archives the old Production version (`v2`: as the stages print versions)
    assert promote_main(["--params", "params.yaml", "--version", "v2"]) == 0
    assert champion() == "2" and production() == ["2"]
    assert versions()["1"].current_stage == "Archived"
    # v3: v1's recipe beats the bad champion v2, so only a min_delta it cannot clear rejects it
    train_and_evaluate({"registry": {"min_delta": 0.99}}, prepare=False)
    v3 = versions()["3"]
    assert float(v3.tags["val_acc_tta"]) > float(v3.tags["champion_val_acc_tta"]) + 0.002  # the default would promote
    assert v3.tags["promotion"] == "rejected" and champion() == "2"
    # v4: better than the (bad) champion v2 at the default min_delta -> promoted
    train_and_evaluate({}, prepare=False)
    assert versions()["4"].tags["promotion"] == "promoted" and champion() == "4"
    assert "PROMOTED" in capsys.readouterr().out


def test_a_champion_crowned_while_the_gate_scores_is_the_one_it_must_beat(project):
    """Two experiments of `dvc queue start -j 2` evaluate at once: each gate read champion v1,
    scored it, and promoted its own version, so the one finishing last took Production even when
    the other, promoted meanwhile, was better. A gate now applies its decision only against the
    champion it scored, else decides again."""
    from emovision import promotion, tracking

    tracking.setup()
    client = mlflow.MlflowClient()
    client.create_registered_model("fer")
    for _ in range(3):
        client.create_model_version("fer", source="file:///nowhere", tags={"dataset": "synthetic"})
    promotion.promote("fer", "1")
    accuracy = {"1": 0.50, "2": 0.80, "3": 0.90}
    scored = []

    def score_champion(version) -> float:
        scored.append(str(version))
        if str(version) == "1":  # meanwhile another worker's gate promotes v3, which beat v1 too
            assert promotion.gate("fer", "3", "synthetic", accuracy["3"], 0.002,
                                  lambda v: accuracy[str(v)], "val_acc").promote
        return accuracy[str(version)]

    decision = promotion.gate("fer", "2", "synthetic", accuracy["2"], 0.002, score_champion, "val_acc")
    assert scored == ["1", "3"] and not decision.promote and str(decision.champion_version) == "3"
    assert champion() == "3" and production() == ["3"] and versions()["2"].tags["champion_version"] == "3"


def tiny_fer2013_raw(tmp_path: Path) -> str:
    """A raw dir holding a tiny real-format FER2013 CSV: its models count as FER2013 ones."""
    from emovision.data.fer2013 import write_csv
    from emovision.data.synthetic import generate_synthetic

    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(generate_synthetic(10, seed=1), raw / "fer2013.csv")
    return str(raw)


def test_demo_model_never_replaces_fer2013_champion(project, tmp_path):
    fer = train_and_evaluate({"train": {"epochs": 1, "lr": 1e-7, "warmup_epochs": 0.0}},
                             raw_dir=tiny_fer2013_raw(tmp_path))
    assert versions()[fer["model_version"]].tags["dataset"] == "fer2013"
    assert champion() == fer["model_version"]
    demo = train_and_evaluate({}, raw_dir=str(tmp_path / "empty"))  # better, but demo data
    tags = versions()[demo["model_version"]].tags
    assert tags["dataset"] == "synthetic" and tags["promotion"] == "rejected"
    assert "never replaces a FER2013 champion" in tags["promotion_reason"]
    assert champion() == fer["model_version"]


def logged_model_metrics(version: str) -> list[str]:
    """The metric names a registered version's logged model shows (MLflow 3's model views)."""
    client = mlflow.MlflowClient()
    registered = client.get_model_version("fer", version)  # the SQLite store leaves model_id empty
    model_id = registered.model_id or registered.source.removeprefix("models:/")
    return [m.key for m in client.get_logged_model(model_id).metrics]


def test_pretrained_is_gated_against_fer2013_champions(project, tmp_path, capsys):
    from emovision.inference import WEIGHTS_DIR

    shipped = json.loads((WEIGHTS_DIR / "config.json").read_text())["metrics"]["val"]["accuracy"]
    weak = train_and_evaluate({"train": {"epochs": 1, "lr": 1e-7, "warmup_epochs": 0.0}},
                              raw_dir=tiny_fer2013_raw(tmp_path))
    assert champion() == weak["model_version"] == "1"
    assert float(versions()["1"].tags["val_acc_tta"]) < shipped
    # evaluate's and promote's figures, once each on the logged model (they were listed twice)
    shown = logged_model_metrics("1")
    assert "test_acc_tta" in shown and sorted(shown) == sorted(set(shown))

    # a weaker FER2013 champion is replaced by the shipped model, compared on PublicTest
    assert promote_main(["--params", "params.yaml", "--pretrained"]) == 0
    shown = logged_model_metrics("2")
    assert "val_acc_tta" in shown and sorted(shown) == sorted(set(shown))
    v2 = versions()["2"]
    assert v2.tags["dataset"] == "fer2013" and v2.tags["promotion"] == "promoted"
    assert float(v2.tags["val_acc_tta"]) == pytest.approx(shipped, abs=1e-4)
    assert champion() == "2" and production() == ["2"]
    # registering again finds the same version by its hash
    assert promote_main(["--params", "params.yaml", "--pretrained"]) == 0
    assert sorted(versions()) == ["1", "2"] and "already registered as fer v2" in capsys.readouterr().out

    # a champion recorded better on PublicTest keeps its place
    mlflow.MlflowClient().set_model_version_tag("fer", "1", "val_acc_tta", f"{shipped + 0.05:.4f}")
    assert promote_main(["--params", "params.yaml", "--version", "1"]) == 0
    assert promote_main(["--params", "params.yaml", "--pretrained"]) == 0
    assert champion() == "1" and production() == ["1"]
    assert versions()["2"].tags["promotion"] == "rejected"
    assert "not promoted" in capsys.readouterr().out


def test_unknown_version_and_missing_model(project, capsys):
    write_params(Path("params.yaml"))
    assert promote_main(["--params", "params.yaml", "--version", "9"]) == 2
    assert "no version 9 of model 'fer'" in capsys.readouterr().err
    assert evaluate_main(["--params", "params.yaml"]) == 2
    assert "run `python -m stages.train` first" in capsys.readouterr().err


def test_promote_a_version_before_any_store_creates_nothing(in_tmp, monkeypatch, capsys):
    """`promote --version 3` in a fresh clone made an empty mlflow.db (and its lock file) only to
    say that no version 3 exists: a store appeared that nothing had written to."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (in_tmp / "dvc.yaml").write_text("stages: {}\n")  # the project marker: the default store is ./mlflow.db
    write_params(Path("params.yaml"))
    assert promote_main(["--params", "params.yaml", "--version", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow store at" in err and "nothing is registered" in err, err
    assert not list(in_tmp.glob("mlflow.db*"))


def test_a_stage_killed_outright_leaves_no_run_running_after_the_next_stage(trained, tmp_path, monkeypatch, capsys):
    """A stage killed with kill -9 while its MLflow run was open left that run RUNNING until a
    promote came by (only promote ended such runs). Every stage that logs now ends them first:
    here the next evaluate."""
    project = shutil.copytree(trained, tmp_path / "project")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    killed = ("import os, signal; from emovision import tracking; tracking.setup()\n"
              "with tracking.tracked_run(run_name='killed'): os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    run, = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.run_name = 'killed'",
                              output_format="list")
    assert run.info.status == "RUNNING"
    assert evaluate_main(["--params", "params.yaml"]) == 0
    assert (f"marked run {run.info.run_id} (killed) KILLED: its process "
            f"({run.data.tags['owner']}) is gone") in capsys.readouterr().out.splitlines()
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "KILLED"


def test_a_promote_killed_before_it_registers_leaves_no_run_running(project, capsys):
    """kill -9 of `promote --pretrained` while it logged the model left its MLflow run RUNNING
    forever. The next promote marks it KILLED (its process is gone) and registers as usual."""
    from emovision import tracking

    write_params(Path("params.yaml"))
    experiment = tracking.setup()  # the store exists before the two processes share it
    client = mlflow.MlflowClient()
    proc = subprocess.Popen([sys.executable, "-m", "stages.promote", "--params", "params.yaml", "--pretrained"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    try:
        while not (running := client.search_runs([experiment], "attributes.status = 'RUNNING'")):
            assert proc.poll() is None, "promote ended before its run was seen"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run, = running
    assert client.get_run(run.info.run_id).info.status == "RUNNING" and not versions()
    assert promote_main(["--params", "params.yaml", "--pretrained"]) == 0
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert (f"marked run {run.info.run_id} ({run.info.run_name}) KILLED: its process "
            f"({run.data.tags['owner']}) is gone") in capsys.readouterr().out.splitlines()
    assert sorted(versions()) == ["1"] and "RUNNING" not in {
        r.info.status for r in client.search_runs([experiment])}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_promotion_stopped_between_its_two_writes_leaves_one_champion(trained, tmp_path, monkeypatch, stop):
    """A promotion is two writes to the registry (stage Production, alias @champion): a Ctrl-C
    between them (3 of 3 tries) left models:/fer/Production on the new version and @champion on
    the old, archived one, so the app and the gate used different models until the next
    promotion. Now Ctrl-C (and kill) is held between them, and what a kill -9 there leaves (the
    alias moved, the stage not) the next gate completes."""
    import sqlite3

    from emovision import promotion

    project = shutil.copytree(trained, tmp_path / "project")
    db, uri = project / "mlflow.db", f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    first = mlflow.MlflowClient().get_model_version("fer", "1")  # the champion; v2: the same model again
    mlflow.MlflowClient().create_model_version("fer", first.source, first.run_id, tags={"dataset": "synthetic"})
    proc = subprocess.Popen([sys.executable, "-m", "stages.promote", "--params", "params.yaml", "--version", "2"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    store = sqlite3.connect(db, timeout=0.001)
    changed = ("select count(*) from model_versions where version = 2 and current_stage = 'Production' union all "
               "select count(*) from registered_model_aliases where version = 2")
    while proc.poll() is None:  # the first of the two writes, whichever it is
        with contextlib.suppress(sqlite3.OperationalError):  # the store is being written
            if any(n for n, in store.execute(changed)):
                proc.send_signal(stop)
                break
    proc.communicate(timeout=60)
    store.close()
    assert proc.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    if stop == signal.SIGKILL:  # the next gate (evaluate's, promote --pretrained's) finishes it first
        promotion.gate("fer", "1", "synthetic", 0.0, 0.002, lambda version: 1.0, "val_acc")
    assert production() == [champion()]


@pytest.mark.parametrize("by_hand", ["archive", "rollback"])
def test_a_gate_leaves_a_champion_a_user_took_out_of_production_alone(trained, tmp_path, monkeypatch, by_hand):
    """The gate completed any @champion that was not Production as a promotion stopped between
    its two writes (7f32d41): a champion the user archived (taken out of service in the UI), or
    a rollback made by moving Production to an older version, was made Production again by the
    next evaluate, the user's Production archived, and the line blamed a stopped promotion. Only
    a promotion that marked itself in flight is completed now (the kill -9 test above)."""
    from emovision import promotion

    project = shutil.copytree(trained, tmp_path / "project")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    first = client.get_model_version("fer", "1")
    for _ in range(2):  # v2 (the champion, promoted as usual) and v3 (a challenger that loses)
        client.create_model_version("fer", first.source, first.run_id, tags={"dataset": "synthetic"})
    promotion.promote("fer", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if by_hand == "archive":
            client.transition_model_version_stage("fer", "2", "Archived")
        else:
            client.transition_model_version_stage("fer", "1", "Production", archive_existing_versions=True)
    kept = production()
    decision = promotion.gate("fer", "3", "synthetic", 0.0, 0.002, lambda version: 1.0, "val_acc")
    assert not decision.promote
    assert production() == kept == ([] if by_hand == "archive" else ["1"])


LOGGING_A_MODEL = """
import sys, time, mlflow
from emovision import tracking
from emovision.errors import cli_main

@cli_main
def main():
    tracking.setup()
    with tracking.tracked_run(run_name="logging") as run:
        # the state serving.log_model leaves while it copies the files: a model PENDING until it returns
        mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        print("logging", flush=True)
        time.sleep(120)

sys.exit(main())
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_model_whose_logging_was_stopped_is_not_left_pending(trained, tmp_path, monkeypatch, stop):
    """A training stopped while it logged its model (Ctrl-C or kill -9 in log_model, the ~2 s
    before registration) left that logged model PENDING for good, listed in `mlflow ui` beside
    the model its resumed run then logged. Now it is FAILED when the run ends (Ctrl-C) or when the
    next stage ends the dead process's run (kill -9)."""
    from emovision import tracking

    project = shutil.copytree(trained, tmp_path / "project")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    proc = subprocess.Popen([sys.executable, "-c", LOGGING_A_MODEL], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "logging"
    proc.send_signal(stop)
    proc.communicate(timeout=60)
    client = mlflow.MlflowClient()
    run, = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.run_name = 'logging'",
                              output_format="list")
    if stop == signal.SIGKILL:
        assert run.info.status == "RUNNING"
        tracking.end_orphaned_runs(run.info.experiment_id)  # what each stage does first
    model, = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert (client.get_run(run.info.run_id).info.status, str(model.status)) == ("KILLED", "FAILED")


def test_a_full_disk_under_the_store_is_one_line(trained, tmp_path):
    """mlflow.db on a full disk ended a stage in MLflow's logged traceback and its own (40 lines
    of SQLAlchemy for `database or disk is full`). Now one line, exit 2, the registry as it was."""
    import sqlite3

    from tests.full_disk import run_on_full_disk

    store = tmp_path / "mlflow.db"
    shutil.copy(trained / "mlflow.db", store)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    first = client.get_model_version("fer", "1")  # the champion; v2: the same model again
    client.create_model_version("fer", first.source, first.run_id, tags={"dataset": "synthetic"})
    disk = tmp_path / "disk"
    rc, err = run_on_full_disk(disk, {"mlflow.db": store},
                               [sys.executable, "-m", "stages.promote", "--params", "params.yaml", "--version", "2"],
                               cwd=trained, env={**os.environ, "PYTHONPATH": str(REPO),
                                                 "MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"})
    assert (rc, err.strip()) == (2, "error: no space left on the disk; free some space and run again")
    after = sqlite3.connect(disk.with_name("disk.after") / "mlflow.db")
    assert after.execute("select alias, version from registered_model_aliases").fetchall() == [("champion", 1)]
    after.close()


EVALUATE_REPORTS = ["metrics.json", "evaluation.json", "confusion.json", "confusion_matrix.png", "per_class_f1.png"]


def test_evaluate_on_a_full_disk_keeps_the_previous_reports_whole(trained, tmp_path):
    """evaluate wrote its five reports one by one: a disk that filled up at the plots left this
    run's metrics.json, evaluation.json and confusion.json beside the previous run's plots, a
    mixed set that DVC then records. Now all five are written first and renamed together: the
    previous set stays whole, nothing temporary is left, one line, exit 2."""
    from tests.full_disk import run_on_full_disk

    project = shutil.copytree(trained, tmp_path / "project", ignore=shutil.ignore_patterns("reports"))
    disk = tmp_path / "reports"
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in EVALUATE_REPORTS:
        (previous / name).write_text(f"the previous run's {name}\n")
    write_params(project / "params.yaml", {"paths": {"reports": str(disk)}, "registry": {"promote": False}})
    # 16 KiB: room for the three JSON files (a page each), not for the plots (tens of KiB)
    rc, err = run_on_full_disk(disk, {name: previous / name for name in EVALUATE_REPORTS},
                               [sys.executable, "-m", "stages.evaluate", "--params", "params.yaml"], free=16384,
                               cwd=project, env={**os.environ, "PYTHONPATH": str(REPO),
                                                 "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    after = disk.with_name("reports.after")
    assert sorted(p.name for p in after.iterdir()) == sorted(EVALUATE_REPORTS)  # no temporaries
    assert {name: (after / name).read_text() for name in EVALUATE_REPORTS} == {
        name: f"the previous run's {name}\n" for name in EVALUATE_REPORTS}
    # (the line before it says that the copied project's MLflow artifact paths were moved)
    assert (rc, err.strip().splitlines()[-1]) == (
        2, f"error: cannot write {disk}: no space left on the disk; free some space and run again ({disk} is as it was)")


def test_dvc_exp_run_with_a_new_key_that_no_stage_lists_is_refused_before_any_stage(tmp_path):
    """`dvc exp run -S +augmnt.hflip=false` (DVC itself suggests the `+` for a key params.yaml
    lacks) changed no param any stage listed: nothing ran and the experiment was reported as
    done, the typo silently ignored. stages.check watches the whole file and runs first."""
    repo = copy_project(tmp_path / "proj")
    full = yaml.safe_load((REPO / "params.yaml").read_text())  # dvc.yaml interpolates its paths
    write_params(repo / "params.yaml", base=full, overrides=TINY)  # tiny: the old code ran the whole pipeline
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "+augmnt.hflip=false"], cwd=repo,
                          env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-2000:]
    assert ("error: params.yaml: unknown section 'augmnt' (did you mean 'augment'?)" in out
            and "Running stage 'prepare'" not in out), out[-2000:]
    assert not (repo / "data" / "prepared").exists()

"""dvc.yaml cannot go stale: every stage, run for real, imports exactly the project files
and reads exactly the params its dvc.yaml entry lists (tests/stage_trace.py records both)."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_params
from tests.test_pipeline import tiny_fer2013_raw

STAGES = ("prepare", "teach", "recrop", "train", "evaluate", "bench")


def trace(stage: str, cwd: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.stage_trace", stage, "--params", "params.yaml"],
                         cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, dict]:
    """What each stage imported and read, over a real run of the whole pipeline; prepare is
    run on a FER2013-format CSV and on the demo set (each path reads its own params), recrop
    and train on both with `augment.app_view` on, teach without teachers and with the trained
    model as its teacher. The FER2013 runs and the demo runs share nothing, so they run side
    by side in two folders (every stage here runs on one thread: ~30 s of ~50 on a 2-core CPU)."""
    def environ(root: Path) -> dict:
        return {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}

    def on_fer2013(root: Path) -> dict[str, dict]:
        env = environ(root)
        write_params(root / "params.yaml", {"data": {"raw_dir": tiny_fer2013_raw(root)}})
        fer = {"prepare": trace("prepare", root, env)}
        # recrop and train with the app views on read what they read only on FER2013 data
        write_params(root / "params.yaml", {"data": {"raw_dir": str(root / "raw")}, "augment": {"app_view": 0.5},
                                            "distill": {"teachers": []}, "train": {"epochs": 1}})
        return {**fer, **{stage: trace(stage, root, env) for stage in ("teach", "recrop", "train")}}

    def on_demo(root: Path) -> tuple[dict[str, dict], dict]:
        env = environ(root)
        write_params(root / "params.yaml", {"data": {"raw_dir": str(root / "empty")}})
        result = {stage: trace(stage, root, env) for stage in STAGES}
        write_params(root / "params.yaml", {"data": {"raw_dir": str(root / "empty")},
                                            "distill": {"teachers": ["models/best.pt"]}, "demo": {"distill": True}})
        return result, trace("teach", root, env)

    with ThreadPoolExecutor(2) as pool:
        fer_runs = pool.submit(on_fer2013, tmp_path_factory.mktemp("trace-fer2013"))
        demo_runs = pool.submit(on_demo, tmp_path_factory.mktemp("trace"))
        on_fer, (result, taught) = fer_runs.result(), demo_runs.result()
    for stage in ("prepare", "recrop", "train"):
        for kind in ("modules", "params"):
            result[stage][kind] = sorted({*on_fer[stage][kind], *result[stage][kind]})
    for kind in ("modules", "params"):
        result["teach"][kind] = sorted({*taught[kind], *result["teach"][kind]})
    return result


def dvc_stage(name: str) -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]


def listed_code(stage: dict) -> tuple[set[str], set[str]]:
    """(files, folders) of project code among a stage's deps (${...} data paths and shipped
    weights, emovision/weights/, aside)."""
    deps = {d for d in stage["deps"] if d.startswith(("emovision", "stages")) and not d.startswith("emovision/weights")}
    return {d for d in deps if d.endswith(".py")}, {d.rstrip("/") for d in deps if not d.endswith(".py")}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_exactly_the_code_it_imports(traces, stage):
    files, folders = listed_code(dvc_stage(stage))
    imported = set(traces[stage]["modules"])
    covered = lambda f: f in files or any(f.startswith(d + "/") for d in folders)  # noqa: E731
    missing = sorted(f for f in imported if not covered(f))
    assert not missing, f"dvc.yaml stage {stage} lacks deps it imports: {missing}"
    stale = sorted(f for f in files if f not in imported)
    stale += sorted(d for d in folders if not any(f.startswith(d + "/") for f in imported))
    assert not stale, f"dvc.yaml stage {stage} lists deps it never imports: {stale}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lists_exactly_the_params_it_reads(traces, stage):
    listed = dvc_stage(stage)["params"]
    read = set(traces[stage]["params"])
    covered = lambda key: any(key == p or key.startswith(p + ".") for p in listed)  # noqa: E731
    missing = sorted(k for k in read if not covered(k))
    assert not missing, f"dvc.yaml stage {stage} reads params it does not list: {missing}"
    unused = sorted(p for p in listed if not any(k == p or k.startswith(p + ".") for k in read))
    assert not unused, f"dvc.yaml stage {stage} lists params it never reads: {unused}"


def test_output_paths_come_from_params():
    text = (REPO / "dvc.yaml").read_text()
    for stage in STAGES:
        entry = dvc_stage(stage)
        outs = [next(iter(o)) if isinstance(o, dict) else o
                for kind in ("outs", "metrics", "plots") for o in entry.get(kind, [])]
        assert outs and all(o.startswith("${") for o in outs), (stage, outs)
    hard_coded = re.findall(r"^\s*- (?:models|reports)\b.*$", text, re.M)
    assert not hard_coded and "reports/" not in text.replace("${paths.reports}/", ""), hard_coded


def test_every_stage_help_opens_with_a_whole_sentence():
    """`python -m stages.X --help` shows the first line of the stage's docstring: a summary cut
    mid-sentence ('..., log it into') tells the user nothing."""
    for path in sorted((REPO / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        assert first.endswith("."), f"{path.name}: --help says {first!r}"


def test_the_check_stage_comes_first_watches_the_whole_params_file_and_lists_its_code(tmp_path):
    """stages.check exists for keys no other stage lists; it must see every key and run first."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages)[0] == "check" and stages["check"]["params"] == [{"params.yaml": None}]
    write_params(tmp_path / "params.yaml")
    traced = trace("check", tmp_path, {**os.environ, "PYTHONPATH": str(REPO)})
    files, folders = listed_code(stages["check"])
    covered = lambda f: f in files or any(f.startswith(d + "/") for d in folders)  # noqa: E731
    assert [f for f in traced["modules"] if not covered(f)] == []
    assert sorted(files) == sorted(f for f in traced["modules"] if f in files)
    assert all(any(f.startswith(d + "/") for f in traced["modules"]) for d in folders)


def test_an_output_outside_the_project_is_refused_by_check_under_dvc(tmp_path, monkeypatch, capsys):
    """`data.app_views: ../views.npz`: recrop wrote the file beside the project, then DVC, which
    records no output outside the repository, failed with an empty line. check refuses it first
    (under DVC only: run by hand a stage may write anywhere). Its list is dvc.yaml's."""
    from stages.check import OUTPUT_PARAMS, main as check_main

    text = (REPO / "dvc.yaml").read_text()
    outs = {key for stage in yaml.safe_load(text)["stages"].values()
            for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])
            for key in re.findall(r"\$\{([a-z_.]+)\}", next(iter(o)) if isinstance(o, dict) else o)}
    assert outs == set(OUTPUT_PARAMS)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    write_params(project / "params.yaml", {"data": {"app_views": "../views.npz"}})
    assert check_main(["--params", "params.yaml"]) == 0  # by hand: allowed
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert check_main(["--params", "params.yaml"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: data.app_views ../views.npz is outside the DVC project {project}, where DVC records no output: "
        f"name a path inside it (data/app_views.npz)")
    write_params(project / "params.yaml")
    assert check_main(["--params", "params.yaml"]) == 0


@pytest.mark.parametrize("key, value, says", [
    ("paths.models", "params.yaml", "is the project's params.yaml"),
    ("paths.reports", ".git", "is the project's .git"),
    ("distill.probs", ".dvc/tmp/probs.npz", "lies inside the project's .dvc"),
    ("data.prepared_dir", ".", "holds the project's params.yaml"),
    ("data.app_views", "mlflow.db", "is the project's mlflow.db"),  # its runs and registry: nothing rebuilds them
    ("paths.models", "mlruns/models", "lies inside the project's mlruns"),
    ("distill.probs", "optuna.db", "is the project's optuna.db"),
])
def test_an_output_naming_a_project_file_is_refused_by_every_stage(tmp_path, monkeypatch, capsys, key, value, says):
    """`dvc exp run -S paths.models=params.yaml` (or dvc.lock, pyproject.toml, a path in .git/, the
    MLflow store or the Optuna storage): a stage's output replaced a file of the project. Every stage refuses such a path in one line
    (stages.parse), check first under DVC, before anything is written."""
    from emovision.config import Params
    from stages.check import main as check_main
    from stages.prepare import main as prepare_main

    for name in ("dvc.yaml", "dvc.lock", "pyproject.toml", ".dvc/config", ".git/HEAD", "mlflow.db", "optuna.db",
                 "mlruns/1/meta.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"the project's {name}\n")
    section, name = key.split(".")
    write_params(tmp_path / "params.yaml", {section: {name: value}})
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    default = getattr(getattr(Params(), section), name)
    for main in (check_main, prepare_main):  # all stages refuse it in stages.parse; prepare would write data/prepared
        assert main(["--params", "params.yaml"]) == 2
        assert capsys.readouterr().err == (f"error: {key} {value} {says}, which no output may replace: name another "
                                           f"path ({default})\n")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

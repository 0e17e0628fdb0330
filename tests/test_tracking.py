"""Model references resolve in the project's store from wherever in the project they are used."""
from __future__ import annotations

import shutil

import pytest

from emovision import tracking


@pytest.fixture
def in_project_subfolder(trained, tmp_path, monkeypatch):
    """A copy of the trained project (with dvc.yaml, so it is a project root), the working
    directory a folder inside it, and no tracking URI set anywhere: as a user's shell has it."""
    import mlflow

    root = tmp_path / "project"
    shutil.copytree(trained, root)
    (root / tracking.PROJECT_MARKER).write_text("stages: {}\n")
    sub = root / "docs" / "sub"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(None)
    return root


@pytest.mark.parametrize("ref", ["models:/fer/Production", "models:/fer@champion", "models:/fer/1", "runs"])
def test_a_model_reference_from_a_project_subfolder_uses_the_projects_store(in_project_subfolder, ref):
    # MLflow resolved models:/ (and runs:/ of a logged model) in ./mlflow.db, whatever it was
    # passed: 'Registered Model with name=fer not found', and an empty store made in docs/sub
    root = in_project_subfolder
    client = tracking.read_client()
    if ref == "runs":
        ref = f"runs:/{client.get_model_version('fer', '1').run_id}/model"
    folder = tracking.download_model(ref)
    assert folder.is_dir()
    assert not (root / "docs" / "sub" / "mlflow.db").exists()

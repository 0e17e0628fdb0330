"""`mlflow ui --app-name emovision`: a real MLflow server on 127.0.0.1 whose page opens a new
browser in the model-training view, and the installed UI still keeps that choice where we seed it."""
from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
from mlflow.utils.plugins import get_entry_points

from emovision import mlflow_ui
from tests.conftest import REPO
from tests.servers import running_server, server_env

UI_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def test_installed_ui_keeps_the_workflow_choice_under_our_key():
    # The seed only works while MLflow's UI stores its GenAI / Model training choice with
    # useLocalStorage({key: "mlflow.workflowType", version: 1}) -> `${key}_v${version}`.
    bundle = next(UI_BUILD.glob("main.*.js")).read_text(encoding="utf-8")
    key, version = mlflow_ui.WORKFLOW_STORAGE_KEY.rsplit("_v", 1)
    assert f'key:"{key}",version:{version}' in bundle
    assert f'MACHINE_LEARNING="{mlflow_ui.MODEL_TRAINING_WORKFLOW}"' in bundle
    assert "=(e,t)=>`${e}_v${t}`" in bundle  # the key format of MLflow's useLocalStorage


def test_mlflow_ui_app_seeds_the_model_training_view(tmp_path):
    assert "emovision" in [e.name for e in get_entry_points("mlflow.app")], \
        "the mlflow.app entry point is not installed: run `pip install -e .`"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ui = [sys.executable, "-m", "mlflow", "ui", "--app-name", "emovision", "--host", "127.0.0.1", "--workers", "1",
          "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port"]
    with running_server(lambda port: ui + [str(port)], "/", tmp_path, server_env(PYTHONPATH=pythonpath),
                        tmp_path / "ui.log") as (port, page):
        # the seed runs in <head>, before the UI's deferred bundle reads the key
        assert mlflow_ui.seed_script() in page.split("</head>")[0]
        assert page.index('<script defer="defer"') < page.index(mlflow_ui.seed_script())  # defer runs after parse
        assert f'localStorage.getItem("{mlflow_ui.WORKFLOW_STORAGE_KEY}")===null' in page  # a chosen view is kept
        # and it is MLflow's whole server: the tracking API answers
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                         json.dumps({"max_results": 5}).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert "Default" in [e["name"] for e in json.loads(response.read())["experiments"]]

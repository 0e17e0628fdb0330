"""The registered model as a real MLflow model: pyfunc loading, `mlflow models serve` on
127.0.0.1 answering crops and whole images, and old-format versions still loading."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest

from emovision.faces import analyze_still
from emovision.inference import WEIGHTS_DIR, load_classifier
from tests.conftest import REPO, write_params
from tests.servers import SERVER_START_S, free_port, running_server, server_env
from tests.media import grace_hopper

REQUEST_S = 60


def _crops() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((48, 48), (31, 57), (120, 90))]


def _image_b64() -> str:
    ok, png = cv2.imencode(".png", grace_hopper())
    assert ok
    return base64.b64encode(png.tobytes()).decode()


def _probs(table: pd.DataFrame, classes) -> np.ndarray:
    return table[list(classes)].to_numpy(dtype=np.float64)


def test_pyfunc_load_model_equals_load_classifier(in_trained):
    model = mlflow.pyfunc.load_model("models:/fer@champion")
    clf = load_classifier("models:/fer@champion", "cpu")
    crops = _crops()
    out = model.predict(pd.DataFrame({"crop": crops}))
    assert list(out["input"]) == [0, 1, 2] and out["box"].isna().all()
    np.testing.assert_allclose(_probs(out, clf.classes), clf.predict_proba(crops), atol=1e-5)
    assert list(out["label"]) == clf.predict(crops)
    # a whole image: the app's detector and framing through analyze_still, boxes included
    faces = model.predict(pd.DataFrame({"image": [_image_b64()]}))
    expected = analyze_still(clf, grace_hopper())
    assert len(faces) == len(expected) >= 1
    assert [list(b) for b in faces["box"]] == [f["box"] for f in expected]
    np.testing.assert_allclose(_probs(faces, clf.classes), [[f["probs"][c] for c in clf.classes] for f in expected],
                               atol=1e-5)
    # the signature MLflow shows and enforces
    info = mlflow.models.get_model_info("models:/fer@champion")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["crop", "image"]
    assert [c["name"] for c in info.signature.outputs.to_dict()][:3] == ["input", "box", "label"]



# A notebook in another venv, holding only the model's requirements: emovision cannot be
# imported there, except the model's own copy (MLflow puts its code_paths, <model>/code, on sys.path).
_LOAD_WITHOUT_EMOVISION = """
import base64, importlib, importlib.machinery, json, os, sys

class NoEmovision:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "emovision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p.endswith(os.sep + "code")])
        if spec is None:
            raise ModuleNotFoundError("No module named 'emovision'", name=name)
        return spec

sys.meta_path.insert(0, NoEmovision)
sys.modules["torchvision"] = None  # not among the model's requirements: an import of it fails here
try:
    importlib.import_module("emovision")
    raise SystemExit("emovision importable before the model loaded")
except ModuleNotFoundError:
    pass
import mlflow, pandas as pd
crops, image = json.loads(sys.stdin.read())
model = mlflow.pyfunc.load_model("models:/fer@champion")
out = model.predict(pd.DataFrame({"crop": crops + [None], "image": [None] * len(crops) + [image]}))
print(json.dumps({"emovision": sys.modules["emovision"].__file__, "rows": out.to_dict("records")}))
"""


def test_a_registered_model_loads_where_emovision_is_not_installed(in_trained, tmp_path):
    """Every version carried only mlflow_model.py, whose first line imports emovision: a
    notebook in another venv got `Failed to import code model ... No module named 'emovision'`,
    and its requirements left out torchvision, which MTCNN then needed for whole images. The model
    now carries emovision's code (code_paths), and MTCNN no longer needs torchvision."""
    crops = _crops()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_EMOVISION], cwd=tmp_path, env=env, text=True,
                          input=json.dumps([[c.tolist() for c in crops], _image_b64()]), capture_output=True,
                          timeout=SERVER_START_S)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert not Path(answer["emovision"]).is_relative_to(REPO)
    rows = pd.DataFrame(answer["rows"])
    clf = load_classifier("models:/fer@champion", "cpu")
    np.testing.assert_allclose(_probs(rows[rows["input"] < 3], clf.classes), clf.predict_proba(crops), atol=1e-5)
    assert [list(b) for b in rows[rows["input"] == 3]["box"]] == [f["box"] for f in analyze_still(clf, grace_hopper())]
    required = Path(mlflow.pyfunc.get_model_dependencies("models:/fer@champion")).read_text()
    assert "torch==" in required and "torchvision" not in required, required

def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def invocations(trained, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve` of the trained model on 127.0.0.1, started once for this module's
    REST tests (a cold start is most of their time): its /invocations URL."""
    env = server_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{trained / 'mlflow.db'}")
    serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/fer/Production", "--env-manager", "local",
             "-h", "127.0.0.1", "--workers", "1", "-p"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(lambda port: serve + [str(port)], "/ping", trained, env, log) as (port, _):
        yield f"http://127.0.0.1:{port}/invocations"


def test_mlflow_models_serve_answers_crops_and_images(in_trained, invocations):
    crops = _crops()
    status, answer = _post(invocations, {"dataframe_records": [  # mixed rows: the other column null
        {"crop": crops[0].tolist(), "image": None}, {"crop": None, "image": _image_b64()},
        {"crop": crops[1].tolist(), "image": None}]})
    assert status == 200, answer
    rows = answer["predictions"]
    clf = load_classifier("models:/fer/Production", "cpu")
    by_input = {i: [r for r in rows if r["input"] == i] for i in range(3)}
    assert len(by_input[0]) == len(by_input[2]) == 1 and by_input[0][0]["box"] is None
    np.testing.assert_allclose([[r[c] for c in clf.classes] for r in (by_input[0][0], by_input[2][0])],
                               clf.predict_proba([crops[0], crops[1]]), atol=1e-5)
    expected = analyze_still(clf, grace_hopper())
    assert [r["box"] for r in by_input[1]] == [f["box"] for f in expected] and expected
    for row, face in zip(by_input[1], expected):
        assert len([c for c in clf.classes if c in row]) == 7 and row["label"] == face["label"]
        np.testing.assert_allclose([row[c] for c in clf.classes], [face["probs"][c] for c in clf.classes], atol=1e-5)
    status, answer = _post(invocations,
                           {"dataframe_records": [{"crop": c.tolist()} for c in crops]})  # crops only
    assert status == 200 and len(answer["predictions"]) == 3
    np.testing.assert_allclose([[r[c] for c in clf.classes] for r in answer["predictions"]],
                               clf.predict_proba(crops), atol=1e-5)
    # bad input: one clear line, HTTP 400, the server keeps running
    status, answer = _post(invocations, {"dataframe_records": [{"image": "not base64!"}]})
    assert status == 400 and "row 0: image is not valid base64" in answer.get("message", "")


def test_a_bad_row_is_answered_in_one_line_naming_it(invocations):
    """MLflow's server wrote the request's table into the message before our line (`Failed to
    predict data '<up to 60 rows of the table>'. Error: row 2: ...`), over several lines."""
    crops = [c.tolist() for c in _crops()]
    status, answer = _post(invocations, {"dataframe_records": [{"crop": crops[0]}, {"crop": crops[1]},
                                                               {"crop": [[1, 2], [3]]}]})
    assert (status, answer["message"]) == (400, "row 2: crop must be a rectangular 2-D array of grey levels")
    assert _post(invocations, {"dataframe_records": [{"crop": crops[0]}]})[0] == 200  # still serving


def test_served_crops_in_colour_or_floats_are_read_and_bad_ones_refused_by_row(in_trained, invocations):
    """The signature typed a crop Array(Array(long)), so MLflow refused the documented H x W x 3
    BGR crops and float crops of 0..1 (the levels rule) before the model saw them, and NaN, text
    or a 4-channel crop, all in `Can not safely convert object to int64`, naming no row; `inputs`
    and `instances` requests failed too. decode_crop now checks crops."""
    rng = np.random.default_rng(5)
    colour, floats = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), rng.random((48, 48))
    clf = load_classifier("models:/fer/Production", "cpu")
    expected = clf.predict_proba([colour, floats])
    for body, rows in (({"dataframe_records": [{"crop": colour.tolist()}, {"crop": floats.tolist()}]}, 2),
                       # MLflow stacks `instances` and `inputs` into one array: crops of one size
                       ({"instances": [{"crop": colour.tolist()}]}, 1), ({"inputs": {"crop": [colour.tolist()]}}, 1)):
        status, answer = _post(invocations, body)
        assert status == 200, answer
        np.testing.assert_allclose(_probs(pd.DataFrame(answer["predictions"]), clf.classes), expected[:rows], atol=1e-5)
    for crop, message in [([[float("nan"), 0.5]], "crop: float pixels must be 0..1, got float64 with NaN or infinite values"),
                          ([[0.5, 200.0]], "crop: float pixels must be 0..1, got float64 values in [0.5, 200]; for grey "
                                           "levels 0..255 pass uint8 (x.astype(np.uint8)) or x / 255"),
                          ([["a", "b"]], "crop must hold only pixel levels (integers 0..255 or floats 0..1)"),
                          ([[True, False]], "crop must hold only pixel levels (integers 0..255 or floats 0..1)"),
                          (np.zeros((4, 4, 4), int).tolist(), "crop must be H x W grey levels (or H x W x 3 BGR), "
                                                              "got shape (4, 4, 4)")]:
        status, answer = _post(invocations, {"dataframe_records": [{"crop": colour.tolist()}, {"crop": crop}]})
        assert (status, answer["message"]) == (400, f"row 1: {message}")
    status, answer = _post(invocations, {"dataframe_records": [{"crops": floats.tolist()}]})  # a misspelt column
    assert status == 400 and "input needs rows with a 'crop' or an 'image' column" in answer["message"]


def test_served_images_may_be_base64_in_lines(invocations):
    """`base64 photo.jpg` (GNU) and Python's base64.encodebytes break the text every 76
    characters, as MIME allows: such an image was refused as `not valid base64`."""
    ok, png = cv2.imencode(".png", grace_hopper())
    wrapped = base64.encodebytes(png.tobytes()).decode()
    one_line = _post(invocations, {"dataframe_records": [{"image": _image_b64()}]})
    assert one_line[0] == 200 and "\n" in wrapped
    assert _post(invocations, {"dataframe_records": [{"image": wrapped}]}) == one_line


def test_mlflow_models_predict_reads_crops_from_csv_as_json_text(in_trained, tmp_path):
    """`mlflow models predict -t csv`: a CSV cell is text, so a crop there is its JSON array (the
    only way CSV carries one); it was refused as `got shape ()`. (The server's text/csv cannot
    read this model's table at all: MLflow's CSV reader takes no `Any` column.)"""
    crops = _crops()[:2]
    table = pd.DataFrame({"crop": [json.dumps(crops[0].tolist()), None, json.dumps(crops[1].tolist())],
                          "image": [None, _image_b64(), None]})
    (tmp_path / "in.csv").write_text(table.to_csv(index=False))
    # the CLI's own function, in this process (a CLI process costs a cold start)
    mlflow.models.predict("models:/fer/Production", input_path=str(tmp_path / "in.csv"), content_type="csv",
                          output_path=str(tmp_path / "out.json"), env_manager="local")
    rows = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    clf = load_classifier("models:/fer/Production", "cpu")
    np.testing.assert_allclose(_probs(rows[rows["input"] != 1], clf.classes), clf.predict_proba(crops), atol=1e-5)
    assert [list(b) for b in rows[rows["input"] == 1]["box"]] == [f["box"] for f in analyze_still(clf, grace_hopper())]
    (tmp_path / "bad.csv").write_text('crop\n"[[1, 2], [3"\n')
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        mlflow.models.predict("models:/fer/Production", input_path=str(tmp_path / "bad.csv"), content_type="csv",
                              env_manager="local")
    assert err.value.message == "row 0: crop text must be a JSON array of grey levels, e.g. [[0, 128], [255, 64]]"


def test_pyfunc_takes_a_table_a_dict_of_columns_or_records(in_trained, invocations):
    """`predict({"image": [a, b]})` was refused (`row 0: image must be base64 text`): MLflow makes a
    dict whose values are all lists of text one row holding the list, and `{"inputs": {"image":
    [...]}}` requests the same. A table, a dict of columns and a list of records now answer alike."""
    model = mlflow.pyfunc.load_model("models:/fer@champion")
    crops, image = _crops()[:2], _image_b64()
    expected = model.predict(pd.DataFrame({"crop": crops + [None, None], "image": [None, None, image, image]}))
    faces = expected[expected["input"] >= 2].assign(input=lambda t: t["input"] - 2).reset_index(drop=True)
    assert len(faces) >= 2
    for given, answer in (({"crop": crops}, expected[expected["input"] < 2]),
                          ([{"crop": c} for c in crops], expected[expected["input"] < 2]),
                          ({"image": [image, image]}, faces), ([{"image": image}] * 2, faces)):
        pd.testing.assert_frame_equal(model.predict(given), answer.reset_index(drop=True))
    status, served = _post(invocations, {"inputs": {"image": [image, image]}})
    assert status == 200, served
    np.testing.assert_allclose(_probs(pd.DataFrame(served["predictions"]), model.metadata.signature.outputs.input_names()[3:]),
                               _probs(faces, model.metadata.signature.outputs.input_names()[3:]), atol=1e-5)


def test_flip_tta_is_a_param_of_the_model(in_trained, invocations):
    """Serving always flipped (TTA on, as in the app); `params={"tta": False}` was dropped with a
    logged warning (the signature had no params), so the plain figures (`val_acc`) could not be
    reproduced through MLflow. tta is now a boolean param, default true."""
    crops = _crops()
    clf = load_classifier("models:/fer@champion", "cpu")
    plain = clf.predict_proba(crops, tta=False)
    assert np.abs(plain - clf.predict_proba(crops)).max() > 1e-3  # the two differ
    model = mlflow.pyfunc.load_model("models:/fer@champion")
    assert model.metadata.signature.params.to_dict() == [{"name": "tta", "type": "boolean", "default": True,
                                                          "shape": None}]
    np.testing.assert_allclose(_probs(model.predict({"crop": crops}, params={"tta": False}), clf.classes), plain,
                               atol=1e-5)
    faces = model.predict({"image": [_image_b64()]}, params={"tta": False})
    expected = analyze_still(clf, grace_hopper(), tta=False)
    np.testing.assert_allclose(_probs(faces, clf.classes), [[f["probs"][c] for c in clf.classes] for f in expected],
                               atol=1e-5)
    status, answer = _post(invocations, {"dataframe_records": [{"crop": c.tolist()} for c in crops],
                                         "params": {"tta": False}})
    assert status == 200, answer
    np.testing.assert_allclose(_probs(pd.DataFrame(answer["predictions"]), clf.classes), plain, atol=1e-5)


def test_requirements_pin_what_serving_needs_installably():
    """A local version label (`torch==2.14.1+cpu`, from PyTorch's CPU index) is on no PyPI, and
    OpenCV was always named opencv-python, unpinned where a headless wheel provided cv2. Then a
    model logged where opencv-python provides cv2 (this project's environment: the app's window)
    required it, and failed to load where its libGL, glib and X11 are missing (MLflow's Docker
    base python:3.11-slim: `ImportError: libGL.so.1`): the served model opens no window, so it
    requires the headless wheel at the installed wheel's version, whichever provides cv2."""
    from emovision.serving import pinned_requirements

    installed = {"torch": "2.14.1+cpu", "torchvision": "0.29.1+cpu", "numpy": "2.4.6", "pandas": "3.1.1",
                 "mlflow": "3.17.2"}  # torchvision installed (a dev environment), not required
    expected = ["torch==2.14.1", "numpy==2.4.6", "pandas==3.1.1",
                "opencv-python-headless==4.14.0.94", "mlflow==3.17.2"]
    for wheel in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
        assert pinned_requirements({**installed, wheel: "4.14.0.94"}) == expected, wheel
        assert pinned_requirements({**installed, wheel: "4.14.0.94"}, "4.14.0") == expected, wheel
    # a cv2 no wheel provides (built from source) was unpinned: the newest wheel, OpenCV 5, served the model
    for built in ("4.14.0", "4.14.0-dev"):
        assert pinned_requirements(installed, built)[3] == "opencv-python-headless==4.14.0.*", built


def _register_old_format(name: str, folder: Path) -> str:
    """A version as registered before MLflow models: a run artifact folder weights.pt + config.json."""
    from emovision import tracking

    tracking.setup()
    with mlflow.start_run(run_name="old-format") as run:
        mlflow.log_artifacts(str(folder), "model")
        source = mlflow.get_artifact_uri("model")
    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, source=source, run_id=run.info.run_id).version)


def test_old_format_versions_still_load(in_tmp, mlflow_store, tmp_path, capsys):
    from emovision.webcam import main as webcam_main

    version = _register_old_format("legacy", WEIGHTS_DIR)
    clf = load_classifier(f"models:/legacy/{version}", "cpu")
    crops = _crops()
    np.testing.assert_array_equal(clf.predict_proba(crops), load_classifier("pretrained", "cpu").predict_proba(crops))
    still = tmp_path / "hopper.png"
    cv2.imwrite(str(still), grace_hopper())
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", f"models:/legacy/{version}", "--source", str(still), "--no-display",
                        "--log", str(log)]) == 0
    assert any(json.loads(line)["faces"] for line in log.read_text().splitlines())
    # and a registered old-format folder whose weights.pt is a pickle with code is refused
    evil = tmp_path / "evil"
    shutil.copytree(WEIGHTS_DIR, evil)
    import pickle

    marker = tmp_path / "exploited"
    (evil / "weights.pt").write_bytes(pickle.dumps({"conv": _Touch(marker)}))
    bad = _register_old_format("legacy", evil)
    from emovision.errors import ModelRefError

    with pytest.raises(ModelRefError, match="never loaded"):
        load_classifier(f"models:/legacy/{bad}", "cpu")
    assert not marker.exists()


class _Touch:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_reading_a_model_creates_no_store(in_trained, tmp_path, monkeypatch):
    """From a folder outside any project: one line, and no mlflow.db or lock file appears;
    from a subfolder of the project, the project's store is found by walking up to dvc.yaml."""
    from emovision.errors import ModelRefError

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ModelRefError, match="no MLflow store at .*set MLFLOW_TRACKING_URI"):
        load_classifier("models:/fer/Production", "cpu")
    assert list(elsewhere.iterdir()) == []
    project = tmp_path / "project"
    (project / "sub" / "dir").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project)  # a fresh clone, nothing registered yet: says how to register one
    with pytest.raises(ModelRefError, match="yet: nothing is registered in this project; `dvc repro` trains"):
        load_classifier("models:/fer/Production", "cpu")
    shutil.copy(in_trained / "mlflow.db", project / "mlflow.db")
    monkeypatch.chdir(project / "sub" / "dir")
    assert load_classifier("models:/fer/Production", "cpu").classes[3] == "happy"
    assert sorted(p.name for p in project.iterdir()) == ["dvc.yaml", "mlflow.db", "sub"]
    assert list((project / "sub" / "dir").iterdir()) == []


@pytest.mark.parametrize("command", [["emovision.webcam", "--model", "models:/fer/Production", "--source", "hopper.png",
                                      "--no-display"], ["stages.promote", "--pretrained"]], ids=["webcam", "promote"])
def test_a_tracking_server_that_does_not_answer_is_named_in_one_line(tmp_path, command):
    """MLFLOW_TRACKING_URI naming a server that is down (or a mistyped port): MLflow's client
    retries each request for minutes, so the app's model load took 12.5 minutes to say so
    (promote: still waiting at this test's 3-minute limit). The server is asked first, once: one line, exit 2."""
    cv2.imwrite(str(tmp_path / "hopper.png"), grace_hopper())
    write_params(tmp_path / "params.yaml")
    uri = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=SERVER_START_S)
    assert (done.returncode, done.stderr) == (2, f"error: MLflow tracking server {uri} does not answer (Connection "
                                                 f"refused); start it, or correct MLFLOW_TRACKING_URI\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hopper.png", "params.yaml"]


@pytest.mark.parametrize("uri, says", [
    ("{tmp}", "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode"),  # a folder: MLflow's
    ("file://{tmp}", "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode"),  # file store, off
    ("foo://bar", "Model registry functionality is unavailable; got unsupported URI 'foo://bar'"),
], ids=["folder", "file", "scheme"])
@pytest.mark.parametrize("command", [["emovision.predict", "--model", "models:/fer/1", "hopper.png"],
                                     ["stages.promote", "--version", "1"]], ids=["predict", "promote"])
def test_a_tracking_uri_mlflow_will_not_open_is_one_line(tmp_path, command, uri, says):
    """MLFLOW_TRACKING_URI a folder, file:// or an unknown scheme: reading a model (predict, the app,
    promote --version) ended in MLflow's traceback, exit 1; the stages that log already said it in one line."""
    cv2.imwrite(str(tmp_path / "hopper.png"), grace_hopper())
    write_params(tmp_path / "params.yaml")
    uri = uri.format(tmp=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=SERVER_START_S)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: MLflow store {uri} cannot be used (MLFLOW_TRACKING_URI): {says}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hopper.png", "params.yaml"]


def test_a_tracking_uris_password_is_never_printed(monkeypatch, capsys):
    """MLFLOW_TRACKING_URI=http://user:s3cret@host/...: the line for a server that is down
    printed the password with the URI. It names the host and path, its credentials as `***@`."""
    from emovision import errors, tracking

    port = free_port()  # nothing listens on it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:s3cret@127.0.0.1:{port}/mlflow")
    code = errors.cli_main(tracking.check_store)()
    assert (code, capsys.readouterr().err) == (2, f"error: MLflow tracking server http://***@127.0.0.1:{port}/mlflow does "
                                                  f"not answer (Connection refused); start it, or correct "
                                                  f"MLFLOW_TRACKING_URI\n")


def test_a_model_whose_files_only_the_servers_machine_has_says_so(in_tmp, mlflow_store, tmp_path, monkeypatch):
    """`mlflow ui` in the project root serves the project's store, whose runs name their files by a
    path of that machine: a client elsewhere (MLFLOW_TRACKING_URI=http://...) was told `mlruns/
    deleted, or mlflow.db copied without it`. It now hears where the files are and how to share."""
    from emovision.errors import ModelRefError

    version = _register_old_format("legacy", WEIGHTS_DIR)
    (tmp_path / "mlruns").rename(tmp_path / "on-the-server")  # a path this machine does not have
    (tmp_path / "server").mkdir()
    serve = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_store, "-h", "127.0.0.1",
             "--workers", "1", "-p"]
    with running_server(lambda port: serve + [str(port)], "/health", tmp_path / "server", server_env(),
                        tmp_path / "server.log") as (port, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        with pytest.raises(ModelRefError, match=rf"cannot load models:/legacy/{version}: its files are in "
                                                rf"{tmp_path}/mlruns/\S+ on the machine of the tracking server "
                                                rf"http://127.0.0.1:{port}, not on this one"):
            load_classifier(f"models:/legacy/{version}", "cpu")


def test_a_moved_project_loads_and_logs_in_its_own_folder(in_trained, tmp_path, monkeypatch, capsys):
    """MLflow records artifact locations as absolute paths: in a project folder moved (or
    copied) after runs existed, models:/ references read the old folder (or failed, `No such
    artifact: ''`, once it was gone) and every new run wrote into it. The store now follows
    the project, once, saying so."""
    from emovision import tracking

    project = tmp_path / "moved project"
    (project / "sub").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(in_trained / "mlflow.db", project / "mlflow.db")
    shutil.copytree(in_trained / "mlruns", project / "mlruns")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(project / "sub")
    assert load_classifier("models:/fer/Production", "cpu").classes[3] == "happy"
    assert "the project moved: MLflow's artifact paths in mlflow.db now point into " \
           f"{project / 'mlruns'}" in capsys.readouterr().err
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_model_version_download_uri("fer", "1").startswith(f"{project / 'mlruns'}/")
    experiment = tracking.setup()  # what every stage that logs does first
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("x", "note.txt")
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(project / "mlruns")
    assert capsys.readouterr().err == ""  # moved once
    from emovision.errors import ModelRefError

    shutil.rmtree(project / "mlruns")  # a store without its artifacts: said as such
    for ref in ("models:/fer/Production", f"runs:/{run.info.run_id}/model"):
        with pytest.raises(ModelRefError, match=rf"cannot load {ref}: its files are missing \({project}/mlruns/"):
            load_classifier(ref, "cpu")


def test_a_store_that_was_not_moved_keeps_its_artifact_paths(tmp_path, migrated_mlflow_db, monkeypatch, capsys):
    """Only a moved or copied project's store is pointed into its own mlruns/. A second folder
    sharing the store (its mlflow.db a link to the first's) rewrote the first's paths into its
    own empty mlruns/, and a store whose artifacts live in another folder's mlruns/ (MLflow put
    them under the working directory before) lost them; in both the artifacts were where the
    store said."""
    from emovision import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: setup() sets it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for project in (first, second, third):
        (project / "mlruns").mkdir(parents=True)
        (project / "dvc.yaml").write_text("stages: {}\n")
        shutil.copy(migrated_mlflow_db, project / "mlflow.db")
    (second / "mlflow.db").unlink()
    (second / "mlflow.db").symlink_to(first / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{third / 'mlflow.db'}")
    client.create_experiment(tracking.EXPERIMENT, artifact_location=str(third / "notebooks" / "mlruns"))
    (third / "notebooks" / "mlruns").mkdir(parents=True)  # its runs' artifacts are there
    runs = {}
    for project in (first, third):
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(project)
        experiment = tracking.setup()
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text("x", "note.txt")
        runs[project] = run.info
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    for project, store in ((second, first), (third, third)):
        monkeypatch.chdir(project)
        assert tracking.follow_moved_project() is None
        run = runs[store]
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        assert client.get_run(run.run_id).info.artifact_uri == run.artifact_uri
        assert (Path(run.artifact_uri.removeprefix("file://")) / "note.txt").is_file()
    assert "the project moved" not in capsys.readouterr().err
    mlflow.set_tracking_uri(None)


def test_a_project_copied_from_a_folder_it_cannot_look_into_follows_it(tmp_path, migrated_mlflow_db,
                                                                      monkeypatch, capsys):
    """A project copied from a colleague's private folder: its store names artifacts where this
    user may not look, and Path.exists raises PermissionError there, so every stage and model
    reference ended in that traceback. A folder that cannot be looked at is one this project
    left. (Root may look anywhere: a name too long to look up fails the same way.)"""
    from emovision import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: setup() sets it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    old = tmp_path / ("x" * 300) / "mlruns"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment(
        tracking.EXPERIMENT, artifact_location=str(old))
    monkeypatch.chdir(tmp_path)
    experiment = tracking.setup()
    assert mlflow.get_experiment(experiment).artifact_location == str(tmp_path / "mlruns")
    assert f"(they named {old})" in capsys.readouterr().err
    mlflow.set_tracking_uri(None)


def test_the_store_keeps_artifacts_in_the_project_root(tmp_path, mlflow_store, migrated_mlflow_db, monkeypatch):
    """`<project root>/mlruns` was meant, but mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI,
    so the check for it always saw it set and MLflow put artifacts under the working directory."""
    from emovision import tracking

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(migrated_mlflow_db, project / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(project / "notebooks")
    experiment = tracking.setup()
    assert mlflow.get_experiment(experiment).artifact_location == str(project / "mlruns")


@pytest.mark.parametrize("ref, message, not_in", [
    ("models:/fer/Staging", "stages: Production", "make one with"),
    ("models:/fer@challenger", "aliases: champion", ".."),
])
def test_registry_errors_read_well(in_trained, ref, message, not_in):
    from emovision.errors import ModelRefError

    with pytest.raises(ModelRefError, match=message) as err:
        load_classifier(ref, "cpu")
    text = str(err.value)
    assert not_in not in text and "\n" not in text
    assert "makes version N Production and @champion" in text  # says what the command does


# Logs the shipped model as an MLflow model, loads it and predicts, recording every warning.
_LOG_LOAD_PREDICT = """
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mlflow, numpy as np, pandas as pd
    from emovision import artifact, serving, tracking
    spec, state_dict = artifact.load_model_dir(artifact.WEIGHTS_DIR)
    tracking.setup()
    with mlflow.start_run():
        info = serving.log_model(spec, state_dict)
    print(LOGGED, file=sys.stderr, flush=True)
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"crop": [np.zeros((48, 48), np.uint8).tolist()]}))
    assert len(out) == 1
print(json.dumps([[issubclass(w.category, UserWarning), w.filename, str(w.message)] for w in caught]))
"""


def test_pyfunc_model_logs_loads_and_predicts_without_mlflow_user_warnings(tmp_path):
    # MLflow warns once per process ("Add type hints to the `predict` method") when a
    # PythonModel's predict has none, so this runs in a fresh interpreter.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "OMP_NUM_THREADS": "1"}
    logged = "--- logged ---"
    done = subprocess.run([sys.executable, "-c", f"LOGGED = {logged!r}\n" + _LOG_LOAD_PREDICT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=SERVER_START_S)
    assert done.returncode == 0, done.stderr[-3000:]
    caught = json.loads(done.stdout.strip().splitlines()[-1])
    from_mlflow = [message for user, where, message in caught if user and f"{os.sep}mlflow{os.sep}" in where]
    assert not from_mlflow, from_mlflow
    # Logging checks the input example by loading the model twice, and MLflow logged each time that
    # this environment (opencv-python: the app's window) lacks the model's opencv-python-headless
    assert "mismatches" not in done.stderr.split(logged)[0], done.stderr
    # and MLflow's predict wrapper is still in place (what `_skip_type_hint_validation` would drop)
    from emovision.serving import EmotionModel

    assert getattr(EmotionModel.predict, "_is_pyfunc", False)

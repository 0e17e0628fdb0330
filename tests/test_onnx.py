"""ONNX export (stages.export) and the ONNX Runtime backend: parity with PyTorch, dynamic
batch, logged with the registered model, and `--backend onnx` in predict."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from emovision.inference import load_classifier
from emovision.onnx_backend import OnnxClassifier, export_onnx
from emovision.onnx_backend import PARITY_MAX_DIFF
from stages.export import main as export_main
from tests.media import grace_hopper


def test_export_stage_writes_a_checked_onnx_logged_with_the_model(in_trained, capsys):
    assert export_main(["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "wrote models/fer.onnx" in out and "prediction mismatches 0 / 0" in out and "logged fer.onnx" in out
    onnx_clf = OnnxClassifier(in_trained / "models" / "fer.onnx")
    torch_clf = load_classifier("models/best.pt", "cpu")
    assert onnx_clf.classes == torch_clf.classes
    rng = np.random.default_rng(5)
    for n in (1, 5, 300):  # the batch axis is dynamic; sizes of crops vary too
        faces = [rng.integers(0, 256, (int(rng.integers(20, 90)),) * 2, dtype=np.uint8) for _ in range(n)]
        for tta in (False, True):
            a, b = onnx_clf.predict_proba(faces, tta), torch_clf.predict_proba(faces, tta)
            assert np.abs(a - b).max() <= PARITY_MAX_DIFF and (a.argmax(1) == b.argmax(1)).all()
    # the registered model carries the file: --backend onnx on a registry reference uses it
    registered = load_classifier("models:/fer/1", backend="onnx")
    assert registered.info["source"].endswith("fer.onnx") and registered.info["backend"] == "onnx"


def test_an_export_onto_a_folder_is_one_line_and_leaves_it(in_trained, capsys):
    """models/fer.onnx a folder: the export ended in IsADirectoryError's traceback."""
    target = in_trained / "models" / "fer.onnx"
    kept = target.with_name("kept.onnx")
    if target.exists():
        target.rename(kept)
    target.mkdir()
    try:
        assert export_main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err
        assert err == "error: cannot write models/fer.onnx: it is a folder (models/fer.onnx is as it was)\n"
        assert target.is_dir() and not any(target.iterdir())
    finally:
        target.rmdir()
        if kept.exists():
            kept.rename(target)


def test_predict_with_the_onnx_backend(in_trained, tmp_path, capsys):
    from emovision.predict import main as predict_main

    image = tmp_path / "hopper.jpg"
    cv2.imwrite(str(image), grace_hopper())
    records = {}
    for backend in ("torch", "onnx"):
        assert predict_main(["--model", "models/best.pt", "--backend", backend, str(image)]) == 0
        records[backend] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records["onnx"]) == len(records["torch"]) >= 1
    for a, b in zip(records["onnx"], records["torch"]):
        assert a["box"] == b["box"] and a["label"] == b["label"]
        assert max(abs(a["probs"][c] - b["probs"][c]) for c in a["probs"]) <= 1e-4  # 4-decimal JSON


def test_shipped_model_onnx_parity_on_publictest_sample(fer2013_prepared, tmp_path):
    """The shipped FER2013 model on 512 PublicTest faces (the full split: README)."""
    from emovision import artifact
    from emovision.data.prepared import load_split

    spec, state_dict = artifact.load_model_dir(artifact.WEIGHTS_DIR)
    onnx_clf = OnnxClassifier(export_onnx(spec, state_dict, tmp_path / "fer.onnx"))
    torch_clf = load_classifier("pretrained", "cpu")
    x, _ = load_split(fer2013_prepared, "val")
    x = x[np.random.default_rng(0).choice(len(x), 512, replace=False)]
    for tta in (False, True):
        a, b = onnx_clf.predict_proba(x, tta), torch_clf.predict_proba(x, tta)
        assert np.abs(a - b).max() <= PARITY_MAX_DIFF and (a.argmax(1) == b.argmax(1)).all()


def test_onnx_parity_script_gives_the_stages_figures_for_any_model(in_trained, capsys):
    """The README's parity figures for the shipped model (every PublicTest face) named a function,
    `stages.export.parity`, and no command: the stage only checks a trained best.pt.
    `scripts/onnx_parity.py MODEL` runs the stage's check on any model reference."""
    import importlib.util

    from emovision.data.prepared import load_split
    from tests.conftest import REPO

    script = importlib.util.spec_from_file_location("onnx_parity", REPO / "scripts" / "onnx_parity.py")
    onnx_parity = importlib.util.module_from_spec(script)
    script.loader.exec_module(onnx_parity)
    assert onnx_parity.main(["models/best.pt", "--prepared", "data/prepared"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["faces"] == len(load_split(in_trained / "data" / "prepared", "val")[1]) > 0
    assert check["prediction_mismatches_plain"] == check["prediction_mismatches_tta"] == 0
    assert max(check["max_prob_diff_plain"], check["max_prob_diff_tta"]) <= PARITY_MAX_DIFF
    assert onnx_parity.main(["models/nothing.pt", "--prepared", "data/prepared"]) == 2
    err = capsys.readouterr().err
    assert "nothing.pt" in err and "\n" not in err.strip() and "Traceback" not in err


def test_onnx_refuses_foreign_files(tmp_path):
    from emovision.errors import ModelRefError

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelRefError, match="not a readable ONNX model"):
        load_classifier(str(tmp_path / "x.onnx"))
    with pytest.raises(ModelRefError, match="no such ONNX file"):
        load_classifier(str(tmp_path / "missing.onnx"))


def _faces(n: int = 40) -> list[np.ndarray]:
    """Face-sized crops of the real photo at seeded places and sizes (grey levels)."""
    gray = cv2.cvtColor(grace_hopper(), cv2.COLOR_BGR2GRAY)
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        side = int(rng.integers(60, 200))
        x, y = int(rng.integers(0, gray.shape[1] - side)), int(rng.integers(0, gray.shape[0] - side))
        out.append(gray[y:y + side, x:x + side])
    return out


def test_the_apps_run_onnx_runtime_on_a_cpu_from_an_export_made_once(in_trained, tmp_path, monkeypatch):
    """The apps' default backend (auto) on a CPU: the model exported once into the user's cache,
    checked against PyTorch, and reused by the next start (the shipped model: 4 s to export, then
    the app classifies a face in 4.7 ms instead of 11.4). Its answers are PyTorch's."""
    from emovision.device import APP_BACKEND
    from emovision.onnx_backend import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = load_classifier("models/best.pt", "cpu", backend=APP_BACKEND)
    assert first.info["backend"] == "onnx"
    files = list(cache_dir().glob("*.onnx"))
    assert len(files) == 1 and first.info["source"] == str(files[0])
    made = files[0].stat().st_mtime_ns
    again = load_classifier("models/best.pt", "cpu", backend=APP_BACKEND)
    assert again.info["source"] == first.info["source"] and files[0].stat().st_mtime_ns == made  # not exported again
    torch_clf = load_classifier("models/best.pt", "cpu")
    for tta in (False, True):
        a, b = again.predict_proba(_faces(), tta), torch_clf.predict_proba(_faces(), tta)
        assert np.abs(a - b).max() <= PARITY_MAX_DIFF and (a.argmax(1) == b.argmax(1)).all()
    # another model (the shipped one) is another file; PyTorch stays where asked for
    assert load_classifier("pretrained", "cpu", backend=APP_BACKEND).info["backend"] == "onnx"
    assert len(list(cache_dir().glob("*.onnx"))) == 2
    assert load_classifier("models/best.pt", "cpu", backend="torch").info.get("backend") != "onnx"


def test_a_damaged_cached_export_is_made_again(in_trained, tmp_path, monkeypatch):
    """A cache file cut short (a full disk, a killed copy) is not an error: it is exported again."""
    from emovision.onnx_backend import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    load_classifier("models/best.pt", "cpu", backend="auto")
    (path,) = cache_dir().glob("*.onnx")
    whole = path.stat().st_size
    path.write_bytes(path.read_bytes()[: whole // 3])
    clf = load_classifier("models/best.pt", "cpu", backend="auto")
    assert clf.info["backend"] == "onnx" and path.stat().st_size == whole


def test_a_cache_that_cannot_be_written_still_runs_onnx_runtime(in_trained, tmp_path, monkeypatch):
    """XDG_CACHE_HOME naming a file (a read-only or odd home): the export lives in a temporary
    folder for the run, nothing is written beside it, and the answers are the same."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    clf = load_classifier("models/best.pt", "cpu", backend="auto")
    assert clf.info["backend"] == "onnx" and blocker.read_text() == "x"
    torch_clf = load_classifier("models/best.pt", "cpu")
    a, b = clf.predict_proba(_faces(), True), torch_clf.predict_proba(_faces(), True)
    assert np.abs(a - b).max() <= PARITY_MAX_DIFF


def test_the_webcam_app_says_which_backend_runs(in_trained, tmp_path, capsys):
    from emovision.webcam import main as webcam_main

    image = tmp_path / "hopper.jpg"
    cv2.imwrite(str(image), grace_hopper())
    for flag, name in (([], "ONNX Runtime"), (["--backend", "torch"], "PyTorch")):
        assert webcam_main(["--model", "models/best.pt", "--source", str(image), "--no-display", *flag]) == 0
        assert f"on cpu with {name}; source" in capsys.readouterr().out


def test_onnx_runtime_sends_no_telemetry_and_writes_no_device_id(tmp_path):
    """ONNX Runtime 1.29+ starts a telemetry uploader at import and keeps a device id under
    the user's cache (a warning line where it cannot). Every ONNX use here imports it through
    `_need_onnx`, which turns that off unless the user chose. A fresh process, a fresh home."""
    import os
    import subprocess
    import sys
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CACHE_HOME": str(cache)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    code = "from emovision.onnx_backend import _need_onnx; _need_onnx(); print('imported')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr
    assert "telemetry" not in done.stderr.lower(), done.stderr
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert not [p for p in written if "Microsoft" in p or "onnxruntime" in p], written

"""ONNX export (stages.export) and the ONNX Runtime backend: parity with PyTorch, dynamic
batch, logged with the registered model, and `--backend onnx` in predict."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from emovision.inference import load_classifier
from emovision.onnx_backend import OnnxClassifier, export_onnx
from stages.export import PARITY_MAX_DIFF
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


def test_onnx_refuses_foreign_files(tmp_path):
    from emovision.errors import ModelRefError

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelRefError, match="not a readable ONNX model"):
        load_classifier(str(tmp_path / "x.onnx"))
    with pytest.raises(ModelRefError, match="no such ONNX file"):
        load_classifier(str(tmp_path / "missing.onnx"))

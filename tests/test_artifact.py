"""The model artifact (emovision.artifact): one spec, its files, and every bad model input
refused with one line before anything runs; the package has no import cycle."""
from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emovision import artifact
from emovision.errors import ModelRefError
from emovision.inference import WEIGHTS_DIR, load_classifier
from tests.conftest import REPO


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_in_the_package():
    """Every import in emovision/ (module level and inside functions) between its own modules."""
    package = REPO / "emovision"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert "emovision.artifact" in graph and _cycles(graph) == []
    assert "emovision.inference" not in graph["emovision.training"]
    assert "emovision.training" not in graph["emovision.inference"]


def _shipped_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(WEIGHTS_DIR, folder)
    return folder


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case, message", [
    ("truncated weights.pt", "weights.pt: not a readable torch weights file (truncated or damaged"),
    ("invalid config.json", "config.json: invalid JSON (Expecting"),
    ("config without preprocess", "no 'preprocess' recorded"),
    ("preprocess.std 0", "preprocess.std must be a number > 0"),
    ("folder without config.json", "no config.json in this folder"),
    ("weights of another width", "weights do not match their config"),
])
def test_bad_model_folders_are_refused_in_one_line(tmp_path, case, message):
    folder = _shipped_copy(tmp_path)
    if case == "truncated weights.pt":
        data = (folder / "weights.pt").read_bytes()
        (folder / "weights.pt").write_bytes(data[: len(data) // 2])
    elif case == "invalid config.json":
        (folder / "config.json").write_text('{"arch": "cnn_small",\n')
    elif case == "config without preprocess":
        _edit_config(folder, lambda c: c.pop("preprocess"))
    elif case == "preprocess.std 0":
        _edit_config(folder, lambda c: c["preprocess"].update(std=0))
    elif case == "folder without config.json":
        (folder / "config.json").unlink()
    elif case == "weights of another width":
        _edit_config(folder, lambda c: c["arch_kwargs"].update(width=16))
    with pytest.raises(ModelRefError, match=message.replace("(", r"\(")) as err:
        load_classifier(str(folder), "cpu")
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


@pytest.mark.parametrize("content", [b'{"test_acc": 0.5}\n', b"\x08\x07\x12\x07pytorch"], ids=["json", "onnx"])
def test_a_file_that_is_not_torch_is_not_called_a_pickle(tmp_path, content):
    """A JSON report or an ONNX export passed as a checkpoint was refused as holding 'pickled
    Python objects' (torch's weights_only text), which sends the user looking for the wrong problem."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelRefError, match="neither a torch.save archive nor a pickle") as err:
        load_classifier(str(path), "cpu")
    assert "pickled Python objects" not in str(err.value)


def test_bad_model_folder_from_the_command_line(tmp_path, capsys):
    """`predict --model FOLDER` (no config.json): one line naming what is missing, exit 2."""
    from emovision.predict import main as predict_main

    folder = _shipped_copy(tmp_path)
    (folder / "config.json").unlink()
    image = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((64, 64), np.uint8))
    assert predict_main(["--model", str(folder), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no config.json in this folder" in err and "not found" not in err


def test_checkpoint_and_folder_hold_the_same_spec(tmp_path):
    spec, state = artifact.load_model_dir(WEIGHTS_DIR)
    assert spec.weights == "ema" and spec.preprocess.std > 0 and len(spec.classes) == 7
    artifact.save_checkpoint(tmp_path / "best.pt", spec, state, kind="best")
    artifact.save_model_dir(tmp_path / "folder", spec, state)
    for path in (tmp_path / "best.pt", tmp_path / "folder"):
        spec2, state2 = artifact.load(path)
        assert spec2 == spec and all(torch.equal(state[k], state2[k]) for k in state)
    faces = np.random.default_rng(1).integers(0, 256, (4, 50, 40), dtype=np.uint8)
    np.testing.assert_array_equal(load_classifier(str(tmp_path / "best.pt"), "cpu").predict_proba(faces),
                                  load_classifier("pretrained", "cpu").predict_proba(faces))


class _Exploit:
    """Unpickling this runs code: a file holding it must be refused, never loaded."""

    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.marker),))


def test_a_pickle_with_code_is_refused_from_every_entry_point(tmp_path, capsys):
    """Checkpoint file, model folder (weights.pt) and the command line: refused, nothing ran."""
    from emovision.predict import main as predict_main

    _Exploit.marker = str(tmp_path / "exploited")
    evil_ckpt = tmp_path / "evil.pt"
    evil_ckpt.write_bytes(pickle.dumps({"state_dict": _Exploit()}))
    folder = _shipped_copy(tmp_path)
    torch.save({"conv": _Exploit()}, folder / "weights.pt")
    for ref in (str(evil_ckpt), str(folder)):
        with pytest.raises(ModelRefError, match="pickled Python objects, and those are never loaded"):
            load_classifier(ref, "cpu")
    with pytest.raises(ModelRefError, match="never loaded"):
        artifact.read_checkpoint(evil_ckpt)
    image = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((64, 64), np.uint8))
    assert predict_main(["--model", str(evil_ckpt), str(image)]) == 2
    assert "never loaded" in capsys.readouterr().err
    assert not Path(_Exploit.marker).exists()

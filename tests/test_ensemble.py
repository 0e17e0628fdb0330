"""Ensembles (emovision.models.ensemble + artifact.ensemble_of): one model that averages its
members' probabilities, through every path a single model takes (folder, load_classifier,
ONNX), and refused in one line where it cannot work."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emovision import artifact
from emovision.config import load_params
from emovision.errors import ConfigError, ModelRefError
from emovision.inference import PRETRAINED_ENSEMBLE, load_classifier
from emovision.preprocess import PreprocessConfig
from tests.conftest import REPO

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def member(seed: int, width: int = 8) -> tuple[artifact.ModelSpec, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    spec = artifact.ModelSpec(arch="cnn_small", arch_kwargs={"width": width, "dropout": 0.1, "activation": "elu"},
                              classes=CLASSES, preprocess=PreprocessConfig(), dataset="fer2013")
    model = artifact.build(spec)
    # random BatchNorm statistics, so the members really differ and are not near-uniform
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return spec, model.state_dict()


def faces(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def test_ensemble_is_the_mean_of_its_members_through_a_model_folder(tmp_path):
    members = [member(0), member(1, width=12), member(2)]
    spec, state_dict = artifact.ensemble_of(members)
    folder = artifact.save_model_dir(tmp_path / "ens", spec, state_dict)
    ens = load_classifier(str(folder), "cpu")
    singles = []
    for i, (s, sd) in enumerate(members):
        singles.append(load_classifier(str(artifact.save_model_dir(tmp_path / f"m{i}", s, sd)), "cpu"))
    for tta in (False, True):
        want = np.mean([m.predict_proba(faces(), tta=tta) for m in singles], 0)
        np.testing.assert_allclose(ens.predict_proba(faces(), tta=tta), want, atol=1e-6)
    # the members disagree somewhere, so the average is not any one of them
    assert max(np.abs(m.predict_proba(faces()) - want).max() for m in singles) > 1e-3


def test_float16_storage_moves_probabilities_little(tmp_path):
    members = [member(0), member(1)]
    exact = artifact.build(*artifact.ensemble_of(members))
    half_spec, half_sd = artifact.ensemble_of(members, torch.float16)
    assert all(v.dtype == torch.float16 for v in half_sd.values() if v.is_floating_point())
    half = load_classifier(str(artifact.save_model_dir(tmp_path / "h", half_spec, half_sd)), "cpu")
    x = torch.from_numpy(faces()).float().div(255).sub(0.507).div(0.255).unsqueeze(1)
    with torch.no_grad():
        want = exact(x).softmax(1).numpy()
    np.testing.assert_allclose(half.predict_proba(faces(), tta=False), want, atol=2e-3)


def test_ensemble_exports_to_onnx_with_parity(tmp_path):
    from emovision.onnx_backend import OnnxClassifier, export_onnx
    from emovision.onnx_backend import PARITY_MAX_DIFF

    spec, state_dict = artifact.ensemble_of([member(0), member(1)])
    onnx_clf = OnnxClassifier(export_onnx(spec, state_dict, tmp_path / "ens.onnx"))
    torch_clf = load_classifier(str(artifact.save_model_dir(tmp_path / "ens", spec, state_dict)), "cpu")
    a, b = onnx_clf.predict_proba(faces()), torch_clf.predict_proba(faces())
    assert np.abs(a - b).max() <= PARITY_MAX_DIFF and (a.argmax(1) == b.argmax(1)).all()


@pytest.mark.parametrize("case, message", [
    ("one", "at least two models"),
    ("classes", "member 1 predicts"),
    ("preprocess", "member 1 preprocesses"),
    ("nested", "member 1 is itself an ensemble"),
])
def test_members_that_cannot_share_a_batch_are_refused(case, message):
    a, b = member(0), member(1)
    if case == "one":
        members = [a]
    elif case == "classes":
        members = [a, (b[0].replace(classes=CLASSES[::-1]), b[1])]
    elif case == "preprocess":
        members = [a, (b[0].replace(preprocess=dataclasses.replace(PreprocessConfig(), mean=0.4)), b[1])]
    else:
        members = [a, artifact.ensemble_of([a, b])]
    with pytest.raises(ModelRefError, match=message):
        artifact.ensemble_of(members)


def test_params_cannot_train_an_ensemble(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  name: cnn_small", "  name: ensemble", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="model.name: 'ensemble' is composed from trained models"):
        load_params(tmp_path / "params.yaml")


def test_pretrained_ensemble_reference():
    """The shipped preset loads as one classifier; without it, one line says what is missing."""
    if not artifact.ENSEMBLE_DIR.is_dir():
        with pytest.raises(ModelRefError, match="no pretrained ensemble shipped"):
            load_classifier(PRETRAINED_ENSEMBLE)
        return
    clf = load_classifier(PRETRAINED_ENSEMBLE, "cpu")
    probs = clf.predict_proba(faces(4))
    assert probs.shape == (4, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)

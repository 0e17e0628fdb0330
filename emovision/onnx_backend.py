"""ONNX export and an ONNX Runtime classifier with the same face-in, probabilities-out API.

`export_onnx` writes the model as ONNX with a dynamic batch axis; the graph takes the
normalised (N, 1, size, size) float input and returns softmax probabilities, and the model's
spec (classes, preprocessing, architecture) travels inside the file as metadata, so a
`.onnx` file is as self-describing as a checkpoint. `OnnxClassifier` feeds it through the
same uint8 preprocessing as `EmotionClassifier` (flip TTA: face and mirror in one batch).
`cached_export` is what the apps run on a CPU: the model exported once, checked against PyTorch
(`parity`) and kept in the user's cache, keyed by the model's contents.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from emovision import artifact, fileio
from emovision.artifact import ModelSpec
from emovision.errors import DataError, ModelRefError
from emovision.preprocess import normalize, prepare_pixels

SPEC_KEY = "emovision_spec"  # ONNX metadata_props key holding the spec as JSON
INPUT_NAME, OUTPUT_NAME = "pixels", "probs"
OPSET = 18
EXPORT_BATCH = 2  # the example batch the graph is traced with (the batch axis stays dynamic)
ONNX_FILE = "fer.onnx"
PARITY_MAX_DIFF = 1e-4  # max |p_onnx - p_torch| over every face and class
# The check of a cached export: seeded faces (noise and gradients: every pixel path of the graph),
# with and without flip TTA. stages.export checks the trained model on all of val instead.
PARITY_FACES, PARITY_SEED = 32, 0


class _Probabilities(nn.Module):
    """The classifier's network followed by softmax: what every backend returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


# ONNX Runtime 1.29+ on Linux and macOS starts a telemetry uploader when it is imported: it
# writes a device id under ~/.cache/Microsoft (a line of warning on stderr where it cannot) and
# sends usage events to Microsoft. A local tool should not phone home, so it is off unless the
# user set ORT_DISABLE_TELEMETRY themselves; ONNX Runtime reads it once, when first imported.
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def _need_onnx():
    os.environ.setdefault(TELEMETRY_ENV, "1")
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ModelRefError("the ONNX backend needs onnx and onnxruntime: pip install onnx onnxruntime onnxscript") from None
    return onnx, onnxruntime


def export_onnx(spec: ModelSpec, state_dict: dict, path: str | Path) -> Path:
    """Write `path` (atomically): fp32 graph, dynamic batch, spec in the metadata."""
    onnx, _ = _need_onnx()
    model = _Probabilities(artifact.build(spec, state_dict)).eval()
    example = torch.zeros(EXPORT_BATCH, 1, spec.preprocess.size, spec.preprocess.size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"x": {0: batch}}, opset_version=OPSET, dynamo=True,
                                verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, json.dumps(spec.to_dict())
    with fileio.atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    return Path(path)


def parity(torch_clf, onnx_path: Path, x: np.ndarray, batch_size: int) -> dict:
    """ONNX Runtime vs PyTorch (`torch_clf`, an EmotionClassifier of the same model: the one
    prediction path) on the same crops, both TTA modes."""
    onnx_clf = OnnxClassifier(onnx_path)
    out = {"faces": int(len(x))}
    for tta in (False, True):
        a = torch_clf.predict_proba(x, tta=tta, batch_size=batch_size)
        b = onnx_clf.predict_proba(x, tta=tta, batch_size=batch_size)
        key = "tta" if tta else "plain"
        out[f"max_prob_diff_{key}"] = float(np.abs(a - b).max()) if len(x) else 0.0
        out[f"prediction_mismatches_{key}"] = int((a.argmax(1) != b.argmax(1)).sum())
    return out


def disagreement(check: dict) -> list[str]:
    """The TTA modes in which a `parity` check failed (empty: the export agrees)."""
    return [k for k in ("plain", "tta") if check[f"max_prob_diff_{k}"] > PARITY_MAX_DIFF
            or check[f"prediction_mismatches_{k}"]]


def cache_dir() -> Path:
    """Where exports are kept: $XDG_CACHE_HOME/emovision/onnx (~/.cache/emovision/onnx)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "emovision" / "onnx"


def model_digest(spec: ModelSpec, state_dict: dict) -> str:
    """The cache key: the spec, every tensor's name, shape, dtype and bytes, and the exporter's
    version (another torch may export another graph)."""
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    h.update(f"torch {torch.__version__} opset {OPSET}".encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu()
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())  # exact
    return h.hexdigest()[:32]


def cached_export(spec: ModelSpec, state_dict: dict, reference: Callable[[], object]
                  ) -> tuple[OnnxClassifier, Path | None]:
    """An ONNX Runtime classifier of the model: from the cache when this model was exported before,
    else exported now (seconds), checked against `reference()` (the model on PyTorch, CPU: built
    only for an export) and cached.
    Returns it and the cached file (None where the cache cannot be written: then the export lives
    in a temporary folder for the time it takes to load). A DataError when the export disagrees."""
    _need_onnx()
    path = cache_dir() / f"{model_digest(spec, state_dict)}.onnx"
    if path.is_file():
        try:
            return OnnxClassifier(path), path
        except ModelRefError:  # cut short or damaged: exported again below, replacing it
            pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_path(path, suffix=".onnx") as staged:
            _export_checked(spec, state_dict, reference(), staged)
        return OnnxClassifier(path), path
    except OSError:  # a read-only or full home: export for this run only
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / ONNX_FILE
            _export_checked(spec, state_dict, reference(), staged)
            return OnnxClassifier(staged), None


def _export_checked(spec: ModelSpec, state_dict: dict, torch_clf, path: Path) -> None:
    export_onnx(spec, state_dict, path)
    rng = np.random.default_rng(PARITY_SEED)
    side = spec.preprocess.size
    ramp = np.linspace(0, 255, side)
    faces = np.concatenate([rng.integers(0, 256, (PARITY_FACES // 2, side, side)),
                            (ramp[None, :, None] * rng.uniform(0, 1, (PARITY_FACES // 2, 1, 1))
                             + ramp[None, None, :] * rng.uniform(0, 1, (PARITY_FACES // 2, 1, 1))) / 2])
    check = parity(torch_clf, path, faces.astype(np.uint8), PARITY_FACES)
    if disagreement(check):
        raise DataError(f"the model's ONNX export disagrees with PyTorch: {json.dumps(check)}")


class OnnxClassifier:
    """EmotionClassifier's API (predict_proba, predict, classes, preprocess, tta) on ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int = 0):
        _, ort = _need_onnx()
        options = ort.SessionOptions()
        # as many threads as PyTorch uses (torch.set_num_threads, train.threads), so the two
        # backends compare like for like; onnxruntime's own default is every core
        options.intra_op_num_threads = threads if threads > 0 else torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a bad file
            raise ModelRefError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise ModelRefError(f"{path}: not an emovision ONNX model (no {SPEC_KEY} metadata)")
        spec = ModelSpec.from_dict(json.loads(meta[SPEC_KEY]), str(path))
        self.classes, self.preprocess, self.tta = spec.classes, spec.preprocess, True
        self.device = torch.device("cpu")
        self.info = {"source": str(path), "arch": spec.arch, "dataset": spec.dataset, "metrics": spec.metrics,
                     "backend": "onnx"}

    def predict_proba(self, faces: np.ndarray | Sequence[np.ndarray], tta: bool | None = None,
                      batch_size: int = 256) -> np.ndarray:
        tta = self.tta if tta is None else tta
        out = np.zeros((len(faces), len(self.classes)), dtype=np.float32)
        for start in range(0, len(faces), batch_size):
            pixels = torch.from_numpy(prepare_pixels(faces[start:start + batch_size], self.preprocess))
            x = normalize(pixels, self.preprocess).numpy()
            n = len(x)
            if tta:  # face and mirror in one call, averaged as in the PyTorch path
                probs = self.session.run(None, {INPUT_NAME: np.concatenate([x, x[..., ::-1]])})[0]
                probs = (probs[:n] + probs[n:]) / 2
            else:
                probs = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x)})[0]
            out[start:start + n] = probs
        return out

    def predict(self, faces: np.ndarray | Sequence[np.ndarray], tta: bool | None = None) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(faces, tta).argmax(1)]

    def __repr__(self) -> str:
        return f"OnnxClassifier({self.info['arch']}, classes={len(self.classes)})"

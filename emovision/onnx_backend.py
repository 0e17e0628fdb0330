"""ONNX export and an ONNX Runtime classifier with the same face-in, probabilities-out API.

`export_onnx` writes the model as ONNX with a dynamic batch axis; the graph takes the
normalised (N, 1, size, size) float input and returns softmax probabilities, and the model's
spec (classes, preprocessing, architecture) travels inside the file as metadata, so a
`.onnx` file is as self-describing as a checkpoint. `OnnxClassifier` feeds it through the
same uint8 preprocessing as `EmotionClassifier` (flip TTA: face and mirror in one batch).
onnx / onnxruntime are an optional extra: `pip install onnx onnxruntime onnxscript`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from emovision import artifact, fileio
from emovision.artifact import ModelSpec
from emovision.errors import ModelRefError
from emovision.preprocess import normalize, prepare_pixels

SPEC_KEY = "emovision_spec"  # ONNX metadata_props key holding the spec as JSON
INPUT_NAME, OUTPUT_NAME = "pixels", "probs"
OPSET = 18
EXPORT_BATCH = 2  # the example batch the graph is traced with (the batch axis stays dynamic)
ONNX_FILE = "fer.onnx"


class _Probabilities(nn.Module):
    """The classifier's network followed by softmax: what every backend returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


def _need_onnx():
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

"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model`, `mlflow models serve`.

A registered version of `fer` is an MLflow model *from code*: its MLmodel points at
`emovision/mlflow_model.py` (copied into the model), whose `EmotionModel` loads
`artifacts/weights.pt` + `artifacts/config.json` through the same artifact module and
classifier as `load_classifier` (weights_only=True, nothing unpickled).

Input: a table, one row per item, with exactly one of two columns set:
- `crop`: a face crop, H x W grey levels (any size) or H x W x 3 (BGR), read by the one rule
  of `emovision.levels` (JSON integers 0..255, floats 0..1); in CSV, where a cell is text,
  the same nested list as JSON text. The signature types it `Any`:
  MLflow's types cannot say "2-D or 3-D", and its own check refused every colour crop in a
  message that named no row, so `decode_crop` checks it;
- `image`: a whole image (PNG/JPEG/...) as base64 text (a `data:image/...;base64,` prefix
  is accepted); its faces are found with the app's detector and framing (`faces.analyze_still`).
Output: one row per face: `input` (the row it came from), `box` ([x, y, w, h] in the image,
null for a crop), `label`, and one probability column per class. Flip TTA is on, as in the app,
unless the param `tta` is false (`predict(..., params={"tta": False})`, `"params"` in a request).

A logged model carries a copy of this package (`code_paths`), so it loads where only its
requirements are installed (`mlflow.pyfunc.get_model_dependencies`), emovision or not.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from emovision import artifact
from emovision.artifact import ModelSpec

MODEL_ARTIFACT = "model"  # the logged model's name in its run
PACKAGE = Path(__file__).resolve().parent  # emovision, copied into every logged model
MODEL_CODE = PACKAGE / "mlflow_model.py"  # the model-from-code file
# The package's weights/ a model leaves out of its copy: the shipped classifiers (a model
# carries its own weights); mtcnn/ stays, whole images are searched with it (1.9 MB).
WEIGHTS_LEFT_OUT = ("weights.pt", "config.json", "ensemble")
MAX_GREY = 255
DATA_URI_MARK = ";base64,"
NUMERIC_KINDS = "iuf"  # numpy dtype kinds of integers and floats (JSON true/false are no levels)
TTA_PARAM = "tta"  # the one inference param: flip TTA, on by default as in the app
# What a logged model needs besides its own copy of emovision, pinned to this environment.
# OpenCV is always its headless wheel, at the version of whichever of its four wheels provides cv2
# here: a served model opens no window, and opencv-python's cv2 needs libGL, glib and X11, which
# MLflow's Docker base (python:3.11-slim) and most servers lack (`ImportError: libGL.so.1`).
OPENCV_HEADLESS = "opencv-python-headless"
SERVING_PACKAGES = ("torch", "numpy", "pandas", OPENCV_HEADLESS, "mlflow")
OPENCV_WHEELS = ("opencv-python", OPENCV_HEADLESS, "opencv-contrib-python", "opencv-contrib-python-headless")
MLFLOW_REQUIREMENT_CHECK = "mlflow.utils.requirements_utils"  # the logger of MLflow's "mismatches" warning


def signature(classes: Sequence[str]):
    """The MLflow signature shown in the UI and enforced by the scoring server."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(AnyType(), "crop", required=False),
                     ColSpec(DataType.string, "image", required=False)])
    outputs = Schema([ColSpec(DataType.long, "input"), ColSpec(Array(DataType.long), "box", required=False),
                      ColSpec(DataType.string, "label"),
                      *[ColSpec(DataType.double, c) for c in classes]])
    params = ParamSchema([ParamSpec(TTA_PARAM, DataType.boolean, True)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example():
    """Two crops of different sizes (what a client sends after its own face detection)."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, MAX_GREY + 1, shape, dtype=np.uint8).tolist() for shape in ((48, 48), (20, 16))]
    return pd.DataFrame({"crop": crops})


def log_model(spec: ModelSpec, state_dict: dict[str, Any], name: str = MODEL_ARTIFACT):
    """Log a model into the active run as an MLflow pyfunc model from code (weights + config
    as artifacts, signature, input example); returns MLflow's ModelInfo (model_id, model_uri)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp, _quiet_requirement_check():
        folder = artifact.save_model_dir(Path(tmp) / name, spec, state_dict)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(MODEL_CODE), code_paths=[str(_package_copy(Path(tmp) / "code"))],
            artifacts={"weights": str(folder / artifact.WEIGHTS_FILE), "config": str(folder / artifact.CONFIG_FILE)},
            signature=signature(spec.classes), input_example=input_example(),
            pip_requirements=_requirements(), tags={"arch": spec.arch, "dataset": str(spec.dataset)})


@contextlib.contextmanager
def _quiet_requirement_check() -> Iterator[None]:
    """log_model loads the new model twice to check its input example, and MLflow warns each time
    that this environment lacks a requirement: the requirements are this environment's own
    versions, so the one it can lack is OPENCV_HEADLESS (where opencv-python provides cv2)."""
    checker = logging.getLogger(MLFLOW_REQUIREMENT_CHECK)
    level = checker.level
    checker.setLevel(logging.ERROR)
    try:
        yield
    finally:
        checker.setLevel(level)


def _package_copy(folder: Path) -> Path:
    """emovision's code (and the MTCNN weights) in `folder`/emovision, for `code_paths`."""
    def left_out(where: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        return skip | (set(WEIGHTS_LEFT_OUT) & set(names) if Path(where) == PACKAGE / "weights" else set())

    return Path(shutil.copytree(PACKAGE, folder / PACKAGE.name, ignore=left_out))


def _requirements() -> list[str]:
    """What the model needs at serve time, pinned to this environment's versions (torchvision is
    not among them since MTCNN does its own non-maximum suppression; versions logged before
    still list it)."""
    from importlib.metadata import PackageNotFoundError, version

    import cv2

    installed = {}
    for name in dict.fromkeys((*SERVING_PACKAGES, *OPENCV_WHEELS)):
        with contextlib.suppress(PackageNotFoundError):
            installed[name] = version(name)
    return pinned_requirements(installed, cv2.__version__)


def pinned_requirements(installed: Mapping[str, str], opencv_version: str | None = None) -> list[str]:
    """SERVING_PACKAGES as `name==version` from `installed` (distribution -> version), each
    installable from PyPI: a local version label (`2.14.1+cpu` from the PyTorch CPU index) is
    dropped, as MLflow's own requirement inference does; a package not installed is unpinned.
    OpenCV's four wheels share their version numbers: the headless one takes the installed one's.
    A cv2 that no wheel provides (built from source) pins the wheels of its release, `opencv_version`
    (cv2.__version__, "4.14.0" or "4.14.0-dev"): `==4.14.0.*`. Unpinned, a served model got the newest
    wheel, OpenCV 5, which has no Haar cascades and predicts otherwise (grace_hopper's face, with the
    model shipped then: neutral 0.648 with 4.14, 0.672 with 5.0)."""
    from packaging.version import Version

    out = []
    for package in SERVING_PACKAGES:
        found = next((n for n in (OPENCV_WHEELS if package == OPENCV_HEADLESS else (package,)) if n in installed), None)
        if found:
            out.append(f"{package}=={Version(installed[found]).public}")
        elif package == OPENCV_HEADLESS and (release := _release(opencv_version)):
            out.append(f"{package}=={release}.*")
        else:
            out.append(package)
    return out


def _release(version: str | None) -> str | None:
    """"4.14.0" of "4.14.0", "4.14.0-dev" or "4.14.0.94"; None for no version or one PEP 440 cannot read."""
    from packaging.version import InvalidVersion, Version

    try:
        return ".".join(map(str, Version(version).release[:3])) if version else None
    except InvalidVersion:
        return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def decode_crop(value: Any, row: int) -> np.ndarray:
    """A JSON nested list (or array) of levels -> uint8 crop (`emovision.levels.to_uint8`:
    integers 0..255, floats 0..1); anything else is refused."""
    from emovision.levels import to_uint8

    if isinstance(value, str):  # a CSV cell (`mlflow models predict -t csv`, text/csv requests)
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"row {row}: crop text must be a JSON array of grey levels, "
                             "e.g. [[0, 128], [255, 64]]") from None
    try:
        arr = np.asarray(value)
        if arr.dtype == object:  # ragged rows, or arrays of arrays from pandas
            arr = np.stack([np.asarray(r) for r in value])
    except (ValueError, TypeError):
        raise ValueError(f"row {row}: crop must be a rectangular 2-D array of grey levels") from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or min(arr.shape[:2]) < 1:
        # a 1-D row: one crop given as the column, {"crop": crop}, whose rows became the table's
        hint = "; one crop per row: {'crop': [crop]}" if arr.ndim == 1 else ""
        raise ValueError(f"row {row}: crop must be H x W grey levels (or H x W x 3 BGR), got shape {arr.shape}{hint}")
    if arr.dtype.kind not in NUMERIC_KINDS:  # JSON text, nulls, integers beyond 64 bits
        raise ValueError(f"row {row}: crop must hold only pixel levels (integers 0..255 or floats 0..1)")
    return to_uint8(arr, f"row {row}: crop")


def decode_image(text: Any, row: int) -> np.ndarray:
    """base64 (optionally a data URI) -> BGR image, by the one image reader's decoding."""
    from emovision.images import decode_image as decode

    if not isinstance(text, str):
        raise ValueError(f"row {row}: image must be base64 text")
    if DATA_URI_MARK in text[:100]:
        text = text.split(DATA_URI_MARK, 1)[1]
    text = "".join(text.split())  # `base64 FILE` (GNU) and base64.encodebytes break lines at 76
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"row {row}: image is not valid base64") from None
    image = decode(raw)
    if isinstance(image, str):
        raise ValueError(f"row {row}: {image}")
    return image


def _image_list_as_rows(table: pd.DataFrame) -> pd.DataFrame:
    """MLflow turns a dict whose values are all lists of text, `predict({"image": [a, b]})` or a
    request's `{"inputs": {"image": [a, b]}}`, into ONE row holding the list (crops, the same dict
    of columns, become a row each); read such a row as one image per row, as the crops are."""
    if len(table) != 1 or "image" not in table.columns or ("crop" in table.columns and not _missing(table["crop"].iloc[0])):
        return table
    images = table["image"].iloc[0]
    return pd.DataFrame({"image": list(images)}) if isinstance(images, (list, np.ndarray)) else table


def predict_table(classifier, table: pd.DataFrame, detector=None, tta: bool = True) -> pd.DataFrame:
    """The pyfunc's predict, on an EmotionClassifier: crops in one batch, images via analyze_still;
    `tta`: flip TTA (the app's default)."""
    table = _image_list_as_rows(table)
    columns = set(table.columns)
    if not columns & {"crop", "image"}:  # MLflow drops the columns its signature does not name
        raise ValueError("input needs rows with a 'crop' or an 'image' column (an empty request has none, and "
                         "MLflow drops columns of other names)")
    crops, crop_rows, rows = [], [], []
    for i, item in enumerate(table.to_dict("records")):
        crop, image = item.get("crop"), item.get("image")
        has_crop = not _missing(crop) if not isinstance(crop, (list, np.ndarray)) else True
        has_image = not _missing(image)
        if has_crop == has_image:
            raise ValueError(f"row {i}: set exactly one of 'crop' and 'image'")
        if has_crop:
            crops.append(decode_crop(crop, i))
            crop_rows.append(i)
        else:
            from emovision.faces import analyze_still  # only for whole images: crops need no detector

            for face in analyze_still(classifier, decode_image(image, i), detector, tta=tta):
                rows.append({"input": i, "box": face["box"], "label": face["label"], **face["probs"]})
    if crops:
        probs = classifier.predict_proba(crops, tta)
        for i, p in zip(crop_rows, probs):
            rows.append({"input": i, "box": None, "label": classifier.classes[int(p.argmax())],
                         **{c: float(v) for c, v in zip(classifier.classes, p)}})
    out = pd.DataFrame(rows, columns=["input", "box", "label", *classifier.classes])
    return out.sort_values("input", kind="stable").reset_index(drop=True)


try:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import PythonModel
except ImportError:  # serving needs mlflow; the rest of emovision does not import this module
    MlflowException = Exception
    PythonModel = object


class BadInput(MlflowException):
    """A request the model cannot read: HTTP 400 (`BadInput.invalid_parameter_value(line)`)
    whose message stays the one line naming the row. MLflow's scoring server rewrites an
    MlflowException's message to `Failed to predict data '<the request's table, up to 60
    lines>'. Error: <line>`; the first message set is kept."""

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):
            self._line = value


class EmotionModel(PythonModel):
    """The pyfunc wrapper: loads through `load_classifier`, predicts through `predict_table`."""

    def load_context(self, context) -> None:
        from pathlib import Path

        from emovision.inference import load_classifier

        self.classifier = load_classifier(str(Path(context.artifacts["config"]).parent), "auto")
        self._detector = None

    def detector(self):
        """The app's default detector, built on the first whole image and kept: a crops-only
        client, and training's input-example check, never load it (so a detector change does
        not make `dvc repro` retrain)."""
        if self._detector is None:
            from emovision.faces import make_detector

            self._detector = make_detector()
        return self._detector

    # pd.DataFrame hints: MLflow keeps its pyfunc wrapper, takes the schema from our explicit
    # signature (a DataFrame hint infers none) and prints no "add type hints" warning.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        has_images = "image" in model_input.columns and model_input["image"].notna().any()
        tta = (params or {}).get(TTA_PARAM, True)  # MLflow checked its type against the signature
        try:
            return predict_table(self.classifier, model_input, self.detector() if has_images else None, tta)
        except ValueError as err:  # the scoring server answers 400 with this one line
            raise BadInput.invalid_parameter_value(str(err)) from None

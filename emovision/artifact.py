"""The model artifact: one typed spec, its save/load for checkpoints and model folders, one build.

Every trained model carries what rebuilds and feeds it (in the spirit of timm's model-carried
config): the architecture and its kwargs, the class names, the preprocessing settings, the
dataset and metrics. Two on-disk forms hold the same spec:

- a training checkpoint (`models/best.pt`, `last.pt`): one `torch.save` dict, the spec's
  fields at the top level plus `state_dict` (and, in last.pt, the optimiser state for
  `--resume`);
- a model folder: `weights.pt` (a bare state dict) + `config.json` (the spec). Registered
  MLflow models keep this folder under their `artifacts/` (see emovision/mlflow_model.py).

Both load with `torch.load(weights_only=True)` and JSON: nothing is ever unpickled as code.
Every failure here is one `ModelRefError` line naming the file and what is wrong with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from emovision import fileio
from emovision.errors import EmovisionError, ModelRefError
from emovision.preprocess import PreprocessConfig

CHECKPOINT_FORMAT = "emovision-checkpoint/1"
FOLDER_FORMAT = "emovision-model/1"
TORCH_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format, and any pickle of protocol 2+
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
# An MLflow pyfunc model keeps its files under artifacts/ next to its MLmodel file.
MLFLOW_ARTIFACTS_DIR = "artifacts"
PRETRAINED = "pretrained"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # the shipped FER2013 model
PRETRAINED_ENSEMBLE = "pretrained-ensemble"  # accuracy over speed: several FER2013 models averaged
ENSEMBLE_DIR = WEIGHTS_DIR / "ensemble"
SPEC_KEYS = ("arch", "arch_kwargs", "classes", "preprocess", "dataset", "metrics", "epoch", "weights", "recipe")
# Which weights an artifact holds. best.pt and registered models hold the EMA average (what
# was scored and selected); last.pt holds the optimiser's live weights (what --resume continues
# from), with the EMA average beside them as `ema_state_dict`.
WeightsKind = Literal["ema", "live"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds and feeds a model, except its weights."""

    arch: str
    arch_kwargs: dict[str, Any]
    classes: tuple[str, ...]
    preprocess: PreprocessConfig
    dataset: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    weights: WeightsKind = "ema"
    # The flat params.yaml values the weights were trained with ({} when unknown): a checkpoint
    # carries them as "params", a model folder made from it as "recipe", and the registry logs them.
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "arch_kwargs": dict(self.arch_kwargs), "classes": list(self.classes),
                "preprocess": self.preprocess.to_dict(), "dataset": self.dataset, "metrics": self.metrics,
                "epoch": self.epoch, "weights": self.weights, "recipe": dict(self.recipe)}

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ModelSpec":
        """Validate a spec read from a file; `where` names the file in every error."""
        if not isinstance(d, dict):
            raise ModelRefError(f"{where}: not an emovision model description (expected a JSON object)")
        for key, kind in (("arch", str), ("arch_kwargs", dict), ("classes", list), ("preprocess", dict)):
            if key not in d:
                raise ModelRefError(f"{where}: no '{key}' recorded, so the model cannot be rebuilt "
                                    f"(an emovision model records {', '.join(SPEC_KEYS[:4])})")
            if not isinstance(d[key], kind):
                raise ModelRefError(f"{where}: '{key}' must be a {kind.__name__}, got {type(d[key]).__name__}")
        if not d["classes"] or not all(isinstance(c, str) for c in d["classes"]):
            raise ModelRefError(f"{where}: 'classes' must be a non-empty list of class names")
        return cls(arch=d["arch"], arch_kwargs=dict(d["arch_kwargs"]), classes=tuple(d["classes"]),
                   preprocess=_preprocess(d["preprocess"], where), dataset=d.get("dataset"),
                   metrics=dict(d.get("metrics") or {}), epoch=d.get("epoch"),
                   weights=d.get("weights", "ema"), recipe=_recipe(d, where))


def _recipe(d: dict[str, Any], where: str) -> dict[str, Any]:
    """A folder's "recipe", else a checkpoint's training "params"; flat name -> plain value."""
    recipe = d.get("recipe") or d.get("params") or {}
    if not isinstance(recipe, dict) or not all(isinstance(k, str) for k in recipe):
        raise ModelRefError(f"{where}: 'recipe' must map params.yaml names to values")
    return dict(recipe)


def _preprocess(d: dict[str, Any], where: str) -> PreprocessConfig:
    """The preprocessing settings, refused at load when they would give NaN or nonsense."""
    fields = {f.name: f.type for f in dataclasses.fields(PreprocessConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ModelRefError(f"{where}: unknown preprocess key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    cfg = PreprocessConfig.from_dict(d)
    number = (int, float)
    if not isinstance(cfg.size, int) or isinstance(cfg.size, bool) or cfg.size < 8:
        raise ModelRefError(f"{where}: preprocess.size must be an integer >= 8, got {cfg.size!r}")
    if not isinstance(cfg.clahe, bool):
        raise ModelRefError(f"{where}: preprocess.clahe must be true or false, got {cfg.clahe!r}")
    if not isinstance(cfg.mean, number) or not math.isfinite(cfg.mean):
        raise ModelRefError(f"{where}: preprocess.mean must be a finite number, got {cfg.mean!r}")
    if not isinstance(cfg.std, number) or not math.isfinite(cfg.std) or cfg.std <= 0:
        raise ModelRefError(f"{where}: preprocess.std must be a number > 0 (it divides every pixel), "
                            f"got {cfg.std!r}")
    return cfg


# ---------------------------------------------------------------- the one build


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrappers' prefixes (torch.compile's `_orig_mod.`, DataParallel's `module.`)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def build(spec: ModelSpec, state_dict: dict[str, torch.Tensor] | None = None, where: str = "model") -> nn.Module:
    """The architecture `spec` describes, with `state_dict` loaded (strictly) when given."""
    from emovision.models import create_model

    try:
        model = create_model(spec.arch, num_classes=len(spec.classes), **spec.arch_kwargs)
    except EmovisionError as err:
        raise ModelRefError(f"{where}: cannot rebuild the model ({err})") from None
    except TypeError as err:
        raise ModelRefError(f"{where}: arch_kwargs do not fit {spec.arch} ({err})") from None
    if state_dict is not None:
        try:
            model.load_state_dict(clean_state_dict(state_dict))
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ModelRefError(f"{where}: weights do not match their config "
                                f"({str(err).splitlines()[0][:300]})") from None
    return model.eval()


# ---------------------------------------------------------------- reading files


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) with one error line for a truncated, foreign or pickled file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModelRefError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ModelRefError(f"{path}: is a folder, not a weights file") from None
    except Exception as err:  # torch raises many types for a truncated, foreign or unsafe file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        with path.open("rb") as f:
            head = f.read(len(TORCH_ZIP_MAGIC))
        if not head.startswith((TORCH_ZIP_MAGIC, PICKLE_MAGIC)):  # torch's weights_only text would blame pickles
            first = "neither a torch.save archive nor a pickle; an exported ONNX model loads from a .onnx name"
        elif "weights_only" in str(err) or "Unsupported global" in str(err):
            first = "it holds pickled Python objects, and those are never loaded: weights_only=True"
        elif head.startswith(TORCH_ZIP_MAGIC):
            first = f"truncated or damaged: {first}"
        raise ModelRefError(f"{path}: not a readable torch weights file ({first})") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint's raw dict (spec fields, state_dict, resume state), weights_only."""
    ckpt = _torch_load(Path(path), map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelRefError(f"{path}: not an emovision checkpoint (no state_dict in it)")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    ckpt = read_checkpoint(path, map_location)
    return ModelSpec.from_dict(ckpt, str(path)), ckpt["state_dict"]


def save_checkpoint(path: str | Path, spec: ModelSpec, state_dict: dict[str, torch.Tensor],
                    **extra: Any) -> Path:
    """Atomic save: a crash mid-write leaves the previous checkpoint intact. `extra` carries
    what only training needs (params, optimiser and RNG state for --resume)."""
    state = {"format": CHECKPOINT_FORMAT, **spec.to_dict(), "state_dict": clean_state_dict(state_dict), **extra}
    # Through a Python file, not a path: torch's own writer reports a full disk as "unexpected
    # pos", Python's file as the OS error fileio turns into one line.
    with fileio.atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(state, f)
    return Path(path)


def model_files(folder: str | Path) -> tuple[Path, Path]:
    """(config.json, weights.pt) of a model folder: a plain one, or an MLflow model's artifacts/."""
    folder = Path(folder)
    for base in (folder, folder / MLFLOW_ARTIFACTS_DIR):
        if (base / CONFIG_FILE).is_file():
            return base / CONFIG_FILE, base / WEIGHTS_FILE
    have = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
    raise ModelRefError(
        f"{folder}: no {CONFIG_FILE} in this folder (an emovision model folder holds {WEIGHTS_FILE} and "
        f"{CONFIG_FILE}; found: {', '.join(have) or 'nothing'})")


def load_model_dir(folder: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, state_dict) of a model folder, without unpickling code."""
    spec = read_spec(folder)
    _, weights_path = model_files(folder)
    if not weights_path.is_file():
        raise ModelRefError(f"{Path(folder)}: no {WEIGHTS_FILE} beside {CONFIG_FILE}")
    state_dict = _torch_load(weights_path)
    if not isinstance(state_dict, dict):
        raise ModelRefError(f"{weights_path}: not a state dict")
    return spec, state_dict


def save_model_dir(folder: str | Path, spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> Path:
    """weights.pt (a bare state dict) + config.json, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(folder / WEIGHTS_FILE) as tmp, tmp.open("wb") as f:  # as save_checkpoint
        torch.save(clean_state_dict(state_dict), f)
    fileio.write_json(folder / CONFIG_FILE, {"format": FOLDER_FORMAT, **spec.to_dict()})
    return folder


def load(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """A checkpoint file or a model folder, whichever `path` is."""
    path = Path(path)
    if path.is_dir():
        return load_model_dir(path)
    if not path.exists():
        raise ModelRefError(f"{path}: no such file or folder")
    return load_checkpoint(path)


def read_spec(folder: str | Path) -> ModelSpec:
    """Only the spec of a model folder (no weights read): claims, class names."""
    config_path, _ = model_files(folder)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelRefError(f"{config_path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelRefError(f"{config_path}: cannot read it ({err})") from None
    return ModelSpec.from_dict(config, str(config_path))


# ---------------------------------------------------------------- ensembles


ENSEMBLE_ARCH = "ensemble"


def ensemble_of(members: list[tuple[ModelSpec, dict[str, torch.Tensor]]],
                dtype: torch.dtype | None = None) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """One model (spec, state_dict) averaging the probabilities of `members` (see
    emovision.models.ensemble). Members must agree on classes and preprocessing, since one
    preprocessed batch feeds them all. `dtype` (e.g. torch.float16) stores floating weights
    smaller; they are cast back to the model's float32 when loaded."""
    if len(members) < 2:
        raise ModelRefError(f"an ensemble needs at least two models, got {len(members)}")
    first = members[0][0]
    for i, (spec, _) in enumerate(members):
        if spec.arch == ENSEMBLE_ARCH:
            raise ModelRefError(f"ensemble member {i} is itself an ensemble; list its members instead")
        if spec.classes != first.classes:
            raise ModelRefError(f"ensemble member {i} predicts {list(spec.classes)}, member 0 {list(first.classes)}")
        if spec.preprocess != first.preprocess:
            raise ModelRefError(f"ensemble member {i} preprocesses as {spec.preprocess.to_dict()}, "
                                f"member 0 as {first.preprocess.to_dict()}: one batch cannot feed both")
    state_dict = {}
    for i, (_, sd) in enumerate(members):
        for k, v in clean_state_dict(sd).items():
            state_dict[f"members.{i}.{k}"] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    kwargs = {"members": [{"arch": s.arch, "arch_kwargs": dict(s.arch_kwargs)} for s, _ in members]}
    spec = ModelSpec(arch=ENSEMBLE_ARCH, arch_kwargs=kwargs, classes=first.classes, preprocess=first.preprocess,
                     dataset=first.dataset if all(s.dataset == first.dataset for s, _ in members) else None)
    return spec, state_dict


def weights_digest(folder: str | Path) -> str:
    """A short content hash of a folder's weights: finds a model registered before."""
    _, weights_path = model_files(folder)
    return hashlib.sha256(weights_path.read_bytes()).hexdigest()[:16]

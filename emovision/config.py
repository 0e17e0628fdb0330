"""params.yaml -> frozen dataclasses, validated once at start.

Every section of params.yaml is a frozen dataclass below; `load_params` rejects unknown
sections and keys (suggesting the closest valid name) and values of the wrong type or
outside their allowed choices, each with one line naming `section.key`.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emovision.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = "params.yaml"


@dataclass(frozen=True)
class BaseParams:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class DataParams:
    source: Literal["auto", "fer2013", "synthetic"] = "auto"
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    on_bad_row: Literal["error", "skip"] = "error"
    synthetic_train_per_class: int = 200


@dataclass(frozen=True)
class PreprocessParams:
    clahe: bool = False
    mean: float = 0.507
    std: float = 0.255


@dataclass(frozen=True)
class ModelParams:
    name: str = "cnn_small"
    dropout: float = 0.3
    width: int = 48
    activation: Literal["elu", "relu", "silu", "gelu"] = "elu"

    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments for `emovision.models.create_model(self.name, **kwargs)`."""
        return {"dropout": self.dropout, "width": self.width, "activation": self.activation}


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 70
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weighted: bool = False
    mixup: float = 0.0
    ema_decay: float = 0.999
    patience: int = 0
    min_delta: float = 0.001
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    threads: int = 0
    max_train_images: int = 0


@dataclass(frozen=True)
class AugmentParams:
    hflip: bool = True
    rotation: float = 10.0
    scale: float = 0.1
    translate: float = 0.1
    erasing: float = 0.4


@dataclass(frozen=True)
class EvaluateParams:
    tta: bool = True
    batch_size: int = 512


@dataclass(frozen=True)
class RegistryParams:
    model_name: str = "fer"
    min_delta: float = 0.002
    promote: bool = True


@dataclass(frozen=True)
class BenchParams:
    repeats: int = 5
    batch_size: int = 64
    train_batches: int = 10
    video_frames: int = 120


@dataclass(frozen=True)
class TuneParams:
    n_trials: int = 20
    timeout: int = 0
    epochs: int = 5
    lr_low: float = 1e-4
    lr_high: float = 1e-2
    dropout_low: float = 0.0
    dropout_high: float = 0.6
    pruner: Literal["median", "hyperband", "none"] = "median"
    study_name: str = "fer-lr-dropout"
    storage: str = ""
    n_jobs: int = 1


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    bench: BenchParams = field(default_factory=BenchParams)
    tune: TuneParams = field(default_factory=TuneParams)

    def flat(self) -> dict[str, Any]:
        """All params as `section.key -> value` (for MLflow)."""
        return {
            f"{section}.{key}": value
            for section, values in dataclasses.asdict(self).items()
            for key, value in values.items()
        }

    def replace(self, **overrides: Any) -> "Params":
        """A copy with dotted-key overrides, validated like the file: replace(**{"train.lr": 1e-3})."""
        raw = dataclasses.asdict(self)
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            _check_name(section, raw, "section", where="override")
            _check_name(key, raw[section], "key", where=f"override {section}")
            raw[section][key] = value
        return params_from_dict(raw, source="overrides")


def _closest(name: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_name(name: str, valid: dict, what: str, where: str) -> None:
    if name not in valid:
        raise ConfigError(
            f"{where}: unknown {what} '{name}'{_closest(name, valid)}; valid: {', '.join(valid)}"
        )


def _coerce(value: Any, annotation: Any, dotted: str, source: str) -> Any:
    """Check one value against its field type; ints are accepted where floats are expected."""
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(
                f"{source}: {dotted} must be one of {' | '.join(map(str, choices))}, got {value!r}"
                f"{_closest(str(value), map(str, choices))}"
            )
        return value
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a new field type must be handled here
        raise TypeError(f"unsupported param type {annotation} for {dotted}")
    if not ok:
        raise ConfigError(
            f"{source}: {dotted} must be {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def params_from_dict(raw: Any, source: str = "params") -> Params:
    """Validate a parsed params mapping; missing sections and keys take their defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Params)}
    built = {}
    for section, values in raw.items():
        _check_name(section, sections, "section", where=source)
        cls = typing.get_type_hints(Params)[section]
        hints = typing.get_type_hints(cls)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys")
        kwargs = {}
        for key, value in values.items():
            _check_name(key, hints, "key", where=f"{source}: section '{section}'")
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", source)
        built[section] = cls(**kwargs)
    params = Params(**built)
    _check_ranges(params, source)
    return params


def _check_ranges(p: Params, source: str) -> None:
    checks = [
        ("model.dropout", 0.0 <= p.model.dropout < 1.0, "in [0, 1)"),
        ("model.width", p.model.width >= 4, ">= 4"),
        ("train.epochs", p.train.epochs >= 1, ">= 1"),
        ("train.batch_size", p.train.batch_size >= 1, ">= 1"),
        ("train.lr", p.train.lr > 0, "> 0"),
        ("train.label_smoothing", 0.0 <= p.train.label_smoothing < 1.0, "in [0, 1)"),
        ("train.mixup", 0.0 <= p.train.mixup <= 1.0, "in [0, 1]"),
        ("train.ema_decay", 0.0 <= p.train.ema_decay < 1.0, "in [0, 1)"),
        ("train.patience", p.train.patience >= 0, ">= 0"),
        ("augment.erasing", 0.0 <= p.augment.erasing <= 1.0, "in [0, 1]"),
        ("preprocess.std", p.preprocess.std > 0, "> 0"),
        ("data.synthetic_train_per_class", p.data.synthetic_train_per_class >= 5, ">= 5"),
        ("tune.lr_low", 0 < p.tune.lr_low < p.tune.lr_high,
         f"> 0 and below tune.lr_high ({p.tune.lr_high})"),
        ("tune.dropout_low", 0 <= p.tune.dropout_low < p.tune.dropout_high < 1,
         f">= 0 and below tune.dropout_high ({p.tune.dropout_high}), which must be < 1"),
        ("tune.epochs", p.tune.epochs >= 1, ">= 1"),
        ("tune.n_jobs", p.tune.n_jobs >= 1, ">= 1"),
    ]
    for dotted, ok, rule in checks:
        if not ok:
            section, key = dotted.split(".")
            value = getattr(getattr(p, section), key)
            raise ConfigError(f"{source}: {dotted} must be {rule}, got {value!r}")


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file; errors name the file and the offending key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return params_from_dict(raw, source=str(path))


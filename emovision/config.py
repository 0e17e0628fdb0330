"""params.yaml -> frozen dataclasses, validated once at start.

Every section of params.yaml is a frozen dataclass below; `load_params` rejects an empty
file, duplicate keys, unknown sections and keys (suggesting the closest valid name), values
of the wrong type, non-finite floats, values out of range and model names the model
registry does not know, each with one line naming `section.key`. Numbers are read as YAML
1.2 (`3e-5` is a float, as DVC's `-S train.lr=3e-5` writes it), not as PyYAML's YAML 1.1.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emovision.errors import ConfigError, shown_uri

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = "params.yaml"
# Params holding a URL that may carry credentials: shown (and logged to MLflow) without them
URI_PARAMS = frozenset({"tune.storage"})


MAX_SEED = 2**32 - 1  # numpy's seed range; torch accepts it too
# Upper bounds that catch a typo (`width: 4800`, `epochs: 80000`) at start instead of after
# hours of training or an out-of-memory crash; each lies far beyond any real use.
MAX_WIDTH = 512  # base channels; compute grows with width^2: w512 costs over 100x the shipped w48
MAX_EPOCHS = 10_000  # 125x the shipped recipe's 80 (also caps train.patience)
MAX_BATCH = 65_536  # twice FER2013's 28,709 training images: one batch holds the whole set
MAX_THREADS = 1024  # CPU threads for torch; two-socket servers have a few hundred
MAX_TRIALS = 10_000  # Optuna trials per invocation
MAX_TUNE_JOBS = 256  # parallel trials (threads) in one process
MAX_BENCH_REPEATS = 1000  # timed repetitions (and training batches per repetition) of the bench
MAX_VIDEO_FRAMES = 10_000  # the bench's generated video: 5.5 minutes at 30 fps
MAX_SYNTHETIC_PER_CLASS = 100_000  # demo-set images per expression (FER2013 Training: ~4,100 on average)
# Beyond this, softened teacher outputs are near uniform in float32 and carry no signal.
MAX_TEMPERATURE = 20.0


@dataclass(frozen=True)
class BaseParams:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class DataParams:
    source: Literal["auto", "fer2013", "synthetic"] = "auto"
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    app_views: str = "data/app_views.npz"
    on_bad_row: Literal["error", "skip"] = "error"
    synthetic_train_per_class: int = 200


@dataclass(frozen=True)
class PathsParams:
    models: str = "models"
    reports: str = "reports"


@dataclass(frozen=True)
class DemoParams:
    epochs: int = 12
    width: int = 32
    distill: bool = False
    init: bool = False


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
    epochs: int = 80
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
    init: str = ""


@dataclass(frozen=True)
class AugmentParams:
    hflip: bool = True
    rotation: float = 15.0
    scale: float = 0.2
    translate: float = 0.1
    erasing: float = 0.4
    brightness: float = 0.5
    aspect: float = 0.2
    fill: float = 0.0
    app_view: float = 0.0


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
    train_batches: int = 4
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
class DistillParams:
    teachers: tuple[str, ...] = ("teachers/cnn-w48-s42", "teachers/cnn-w48-s7-live",
                                 "teachers/cnn-w48-s3-live")
    probs: str = "data/teacher/probs.npz"
    reuse: str = "teachers/fer2013-probs.npz"
    alpha: float = 0.5
    temperature: float = 4.0


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    data: DataParams = field(default_factory=DataParams)
    paths: PathsParams = field(default_factory=PathsParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    registry: RegistryParams = field(default_factory=RegistryParams)
    bench: BenchParams = field(default_factory=BenchParams)
    tune: TuneParams = field(default_factory=TuneParams)
    demo: DemoParams = field(default_factory=DemoParams)
    distill: DistillParams = field(default_factory=DistillParams)

    def value(self, dotted: str) -> Any:
        """The value of the param `section.key`."""
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)

    def flat(self) -> dict[str, Any]:
        """All params as `section.key -> value` (for MLflow), the tune storage URL's credentials
        hidden (train logs every param to the store)."""
        return {
            f"{section}.{key}": shown_uri(value) if f"{section}.{key}" in URI_PARAMS else value
            for section, values in dataclasses.asdict(self).items()
            for key, value in values.items()
        }

    def replace(self, source: str = "overrides", **overrides: Any) -> "Params":
        """A copy with dotted-key overrides, validated like the file: replace(**{"train.lr": 1e-3});
        an error names `source` (a command-line flag: `--n-trials`)."""
        raw = dataclasses.asdict(self)
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            _check_name(section, raw, "section", where="override")
            _check_name(key, raw[section], "key", where=f"override {section}")
            raw[section][key] = value
        return params_from_dict(raw, source=source)

    def distills_on(self, source: str) -> bool:
        """Whether distill.* applies to a training on `source` (on the demo set only with
        `demo.distill`: the teachers are FER2013 models and its faces are synthetic)."""
        return source != "synthetic" or self.demo.distill

    def app_views_on(self, source: str) -> bool:
        """Whether training on `source` shows the app's crops (`augment.app_view`, stages.recrop):
        on FER2013 only (the demo set's drawn faces are not what a face detector is made for)."""
        return source != "synthetic" and self.augment.app_view > 0

    def for_dataset(self, source: str) -> "Params":
        """The params a training on `source` uses: on the built-in demo set, `train.epochs`
        and `model.width` are capped by the `demo` section so a fresh clone's first
        `dvc repro` takes minutes, and distillation and `train.init` are off unless
        `demo.distill` / `demo.init` (the teachers and the models to start from are FER2013
        models); FER2013 trains with the params as written."""
        if source != "synthetic":
            return self
        caps = {"model.width": min(self.model.width, self.demo.width)}
        if not self.distills_on(source):
            caps.update({"distill.teachers": (), "distill.alpha": 0.0})
        if not self.app_views_on(source):
            caps["augment.app_view"] = 0.0
        if not self.demo.init:
            caps["train.init"] = ""
        return self.with_epochs(min(self.train.epochs, self.demo.epochs), **caps)

    def with_epochs(self, epochs: int, source: str = "overrides", **overrides: Any) -> "Params":
        """A copy that trains `epochs` epochs (and takes `overrides`), its warm-up cut to fit the
        run (train.warmup_epochs <= train.epochs): how the demo cap, a tune trial or a timing
        probe shortens a run the params file sized, where the file's warm-up may be longer."""
        return self.replace(source, **{"train.epochs": epochs,
                                       "train.warmup_epochs": min(self.train.warmup_epochs, epochs)}, **overrides)


def _closest(name: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_name(name: str, valid: dict, what: str, where: str) -> None:
    if name not in valid:
        raise ConfigError(
            f"{where}: unknown {what} '{name}'{_closest(name, valid)}; valid: {', '.join(valid)}"
        )


def _section_of(key: Any) -> str | None:
    """The one section that has `key`, if only one has it."""
    homes = [f.name for f in dataclasses.fields(Params)
             if key in {k.name for k in dataclasses.fields(typing.get_type_hints(Params)[f.name])}]
    return homes[0] if len(homes) == 1 else None


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
        # `-S train.epochs=2.0` is a whole number: DVC compares it equal to 2 and reruns nothing,
        # so refusing it would leave a params.yaml that only the next stage to run refuses
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{source}: {dotted} must be a finite number, got {value!r}")
    elif annotation is str:
        ok = isinstance(value, str)
    elif annotation == tuple[str, ...]:  # a YAML list of strings (distill.teachers)
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if not ok:
            raise ConfigError(f"{source}: {dotted} must be a list of strings, got {value!r}")
        value = tuple(value)
    else:  # pragma: no cover - a new field type must be handled here
        raise TypeError(f"unsupported param type {annotation} for {dotted}")
    if not ok:
        kind = "bool (true or false)" if annotation is bool else annotation.__name__
        rule = _default_rules().get(dotted)
        got = "null (no value)" if value is None else f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{source}: {dotted} must be {kind}{f' {rule}' if rule else ''}, got {got}")
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
            if key not in hints and (home := _section_of(key)):  # `train.seed` for base.seed
                raise ConfigError(f"{source}: section '{section}' has no key '{key}'; it is {home}.{key}")
            _check_name(key, hints, "key", where=f"{source}: section '{section}'")
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", source)
        built[section] = cls(**kwargs)
    params = Params(**built)
    _check_ranges(params, source)
    return params


def _default_rules() -> dict[str, str]:
    """Each key's range rule as the defaults state it: a value of the wrong type is told the
    range too (`train.epochs must be int in [1, 10000], got float 2.5`)."""
    rules: dict[str, str] = {}
    for dotted, _, rule in _range_rules(Params()):
        rules.setdefault(dotted, rule)  # a key's first rule is its range (distill.alpha has two)
    return rules


def _check_ranges(p: Params, source: str) -> None:
    for dotted, ok, rule in _range_rules(p):
        if not ok:
            raise ConfigError(f"{source}: {dotted} must be {rule}, got {p.value(dotted)!r}")
    from emovision.models import list_models, trainable_models  # torch; every caller of params needs it anyway

    if p.model.name not in list_models():
        raise ConfigError(f"{source}: model.name: unknown model '{p.model.name}'"
                          f"{_closest(p.model.name, list_models())}; valid: {', '.join(list_models())}")
    if p.model.name not in trainable_models():
        raise ConfigError(f"{source}: model.name: '{p.model.name}' is composed from trained models "
                          f"(scripts/ship_model.py --ensemble), not trained from params; "
                          f"trainable: {', '.join(trainable_models())}")


def _range_rules(p: Params) -> list[tuple[str, bool, str]]:
    """(key, whether `p` keeps its rule, the rule) for every key with a range."""
    return [
        ("base.seed", 0 <= p.base.seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
        ("data.raw_dir", p.data.raw_dir.strip() != "", "a folder name"),
        ("data.prepared_dir", p.data.prepared_dir.strip() != "", "a folder name"),
        ("data.app_views", p.data.app_views.strip() != "", "a file name"),
        ("data.synthetic_train_per_class", 5 <= p.data.synthetic_train_per_class <= MAX_SYNTHETIC_PER_CLASS,
         f"in [5, {MAX_SYNTHETIC_PER_CLASS}]"),
        ("paths.models", p.paths.models.strip() != "", "a folder name"),
        ("paths.reports", p.paths.reports.strip() != "", "a folder name"),
        ("preprocess.mean", 0.0 <= p.preprocess.mean <= 1.0, "in [0, 1] (pixels are scaled to [0, 1])"),
        ("preprocess.std", p.preprocess.std > 0, "> 0"),
        ("model.dropout", 0.0 <= p.model.dropout < 1.0, "in [0, 1)"),
        ("model.width", 4 <= p.model.width <= MAX_WIDTH, f"in [4, {MAX_WIDTH}] (base channels; the shipped model has 48)"),
        ("train.epochs", 1 <= p.train.epochs <= MAX_EPOCHS, f"in [1, {MAX_EPOCHS}]"),
        ("train.batch_size", 1 <= p.train.batch_size <= MAX_BATCH, f"in [1, {MAX_BATCH}]"),
        ("train.lr", p.train.lr > 0, "> 0"),
        ("train.weight_decay", p.train.weight_decay >= 0, ">= 0"),
        ("train.momentum", 0.0 <= p.train.momentum < 1.0, "in [0, 1)"),
        ("train.warmup_epochs", p.train.warmup_epochs >= 0, ">= 0"),
        # build_scheduler would clamp it to the run: all ramp, train.lr reached at the last step, no decay
        ("train.warmup_epochs", p.train.warmup_epochs <= p.train.epochs,
         f"<= train.epochs ({p.train.epochs}): a longer warm-up never reaches train.lr"),
        ("train.label_smoothing", 0.0 <= p.train.label_smoothing < 1.0, "in [0, 1)"),
        ("train.mixup", 0.0 <= p.train.mixup <= 1.0, "in [0, 1]"),
        ("train.ema_decay", 0.0 <= p.train.ema_decay < 1.0, "in [0, 1)"),
        ("train.patience", 0 <= p.train.patience <= MAX_EPOCHS, f"in [0, {MAX_EPOCHS}] (0 disables)"),
        ("train.min_delta", p.train.min_delta >= 0, ">= 0"),
        ("train.threads", 0 <= p.train.threads <= MAX_THREADS, f"in [0, {MAX_THREADS}] (0 keeps torch's default)"),
        ("train.max_train_images", p.train.max_train_images >= 0, ">= 0 (0 uses all)"),
        ("augment.rotation", 0.0 <= p.augment.rotation <= 180.0, "in [0, 180] degrees"),
        ("augment.scale", 0.0 <= p.augment.scale < 1.0, "in [0, 1) (a zoom factor of 1 +- scale)"),
        ("augment.translate", 0.0 <= p.augment.translate <= 0.5, "in [0, 0.5] (a fraction of the size)"),
        ("augment.erasing", 0.0 <= p.augment.erasing <= 1.0, "in [0, 1]"),
        ("augment.brightness", 0.0 <= p.augment.brightness < 1.0, "in [0, 1) (a fraction of the exposure)"),
        ("augment.aspect", 0.0 <= p.augment.aspect <= 1.0, "in [0, 1] (a fraction of the width/height ratio)"),
        ("augment.fill", 0.0 <= p.augment.fill <= 1.0, "in [0, 1] (a probability)"),
        ("augment.app_view", 0.0 <= p.augment.app_view <= 1.0, "in [0, 1] (a probability)"),
        ("evaluate.batch_size", 1 <= p.evaluate.batch_size <= MAX_BATCH, f"in [1, {MAX_BATCH}]"),
        ("registry.model_name", re.fullmatch(MODEL_NAME_PATTERN, p.registry.model_name) is not None,
         "a registered-model name (letters, digits, '_', '-', '.')"),
        ("registry.min_delta", 0.0 <= p.registry.min_delta < 1.0, "in [0, 1) (an accuracy gain)"),
        ("bench.repeats", 1 <= p.bench.repeats <= MAX_BENCH_REPEATS, f"in [1, {MAX_BENCH_REPEATS}]"),
        ("bench.batch_size", 1 <= p.bench.batch_size <= MAX_BATCH, f"in [1, {MAX_BATCH}]"),
        ("bench.train_batches", 1 <= p.bench.train_batches <= MAX_BENCH_REPEATS, f"in [1, {MAX_BENCH_REPEATS}]"),
        ("bench.video_frames", 1 <= p.bench.video_frames <= MAX_VIDEO_FRAMES, f"in [1, {MAX_VIDEO_FRAMES}]"),
        ("tune.n_trials", 0 <= p.tune.n_trials <= MAX_TRIALS,
         f"in [0, {MAX_TRIALS}] (0: report the study, no new trials)"),
        ("tune.timeout", p.tune.timeout >= 0, ">= 0 seconds (0: no limit)"),
        ("tune.lr_low", 0 < p.tune.lr_low < p.tune.lr_high,
         f"> 0 and below tune.lr_high ({p.tune.lr_high})"),
        ("tune.dropout_low", 0 <= p.tune.dropout_low < p.tune.dropout_high < 1,
         f">= 0 and below tune.dropout_high ({p.tune.dropout_high}), which must be < 1"),
        ("tune.epochs", 1 <= p.tune.epochs <= MAX_EPOCHS, f"in [1, {MAX_EPOCHS}]"),
        ("tune.study_name", p.tune.study_name.strip() != "", "a study name"),
        ("tune.n_jobs", 1 <= p.tune.n_jobs <= MAX_TUNE_JOBS, f"in [1, {MAX_TUNE_JOBS}]"),
        ("demo.epochs", 1 <= p.demo.epochs <= MAX_EPOCHS, f"in [1, {MAX_EPOCHS}]"),
        ("demo.width", 4 <= p.demo.width <= MAX_WIDTH, f"in [4, {MAX_WIDTH}]"),
        ("distill.teachers", all(t.strip() for t in p.distill.teachers)
         and len(set(p.distill.teachers)) == len(p.distill.teachers), "model references, none empty or twice"),
        ("distill.probs", p.distill.probs.strip() != "", "a file name"),
        ("distill.alpha", 0.0 <= p.distill.alpha <= 1.0, "in [0, 1] (the weight of the teachers' soft loss)"),
        ("distill.alpha", p.distill.alpha == 0 or bool(p.distill.teachers),
         "0 while distill.teachers is empty (there is no teacher to learn from)"),
        ("distill.temperature", 0.0 < p.distill.temperature <= MAX_TEMPERATURE, f"in (0, {MAX_TEMPERATURE}]"),
    ]


MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key '{key}' at line {line} (first at line {first_line})")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (`1e-3`, `3e-05`) and booleans (only
    true/false in any of YAML 1.2's casings: `amp: off` is the string 'off'), and duplicate keys refused.

    PyYAML implements YAML 1.1, where a float needs a dot (`1.0e-3`), so `1e-3` loads as the
    string '1e-3'; DVC (ruamel, YAML 1.2) writes `-S train.lr=3e-5` as `lr: 3e-05`.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise _DuplicateKey(key, line, first[key])
            first[key] = line
        return super().construct_mapping(node, deep=deep)


YAML12_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
                              |[-+]?\.(?:inf|Inf|INF)
                              |\.(?:nan|NaN|NAN))$""", re.X)
# YAML 1.2 booleans are true/false in three casings, as DVC's ruamel reads them: YAML 1.1's
# yes/no/on/off would turn `amp: off` into False (ruamel reads and writes the string 'off').
YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:bool", YAML12_BOOL, list("tTfF"))
# Added after the int resolver, so `42` stays an int and only non-ints fall through to floats.
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


TAB_HINT = "a tab character: YAML indents with spaces"


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python objects with ParamsLoader; errors name `source` and the line."""
    try:
        return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or ""
        where = f" at line {mark.line + 1}" if mark else ""
        # PyYAML's words for a tab ("found character '\\t' that cannot start any token") do not
        # say what to do; a tab is the usual cause in a hand-edited params.yaml
        why = TAB_HINT if "'\\t'" in problem else problem
        raise ConfigError(f"{source}: not valid YAML{where}{f' ({why})' if why else ''}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file; errors name the file and the offending key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"params file {path} is a folder") from None
    except OSError as err:
        raise ConfigError(f"params file {path} cannot be read ({err.strerror})") from None
    try:  # YAML is UTF-8 (a BOM is fine); an editor's Latin-1 "é" in a comment ended in a traceback
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text at line {line} "
                          f"(byte 0x{data[err.start]:02x}): save it as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is None:  # an empty file would silently mean "all defaults" (70 FER2013 epochs)
        raise ConfigError(f"{path}: the params file is empty; copy the project's params.yaml "
                          f"and change what you need")
    return params_from_dict(raw, source=str(path))



# The params that name a stage's outputs (dvc.yaml's `${...}` in outs, metrics and plots).
OUTPUT_PARAMS = ("data.prepared_dir", "distill.probs", "data.app_views", "paths.models", "paths.reports")
# What makes a folder this project. A stage output naming one (`dvc exp run -S paths.models=dvc.lock`)
# was written over it, or into .git/, and a folder output holding them (`paths.models: .`) replaced them.
PROJECT_CONTROL_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "pyproject.toml", ".dvc", ".git")
PROJECT_MARKER = "dvc.yaml"
# The project's default stores (tracking, tuning): its runs, registry and studies, which neither git nor
# DVC holds, so an output written over them (`-S data.app_views=mlflow.db`) lost them for good.
MLFLOW_DB, MLFLOW_ARTIFACTS, OPTUNA_DB = "mlflow.db", "mlruns", "optuna.db"
PROJECT_STORES = (MLFLOW_DB, MLFLOW_ARTIFACTS, OPTUNA_DB)


def nearest_project(cwd: Path) -> Path:
    """The nearest folder with dvc.yaml from `cwd` up (the project `cwd`'s relative paths lead
    into), else `cwd` itself (a bare folder: tests, scripts)."""
    return next((d for d in (cwd, *cwd.parents) if (d / PROJECT_MARKER).is_file()), cwd)


def check_outputs_spare_the_project(params: Params, params_file: str | Path, cwd: Path | None = None) -> None:
    """No output path of `params` is, holds or lies inside the params file, a control file or a
    default store of the project it is written in (the nearest folder with dvc.yaml from `cwd` up, where relative
    paths lead; else `cwd`); else one ConfigError line naming the key. Checked by every stage
    before it writes."""
    cwd = (cwd or Path.cwd()).resolve()
    root = nearest_project(cwd)
    params_file = (cwd / params_file).resolve()
    protected = {root / name: f"the project's {name}" for name in (*PROJECT_CONTROL_FILES, *PROJECT_STORES)}
    protected.setdefault(params_file, f"the params file {params_file}")
    for key in OUTPUT_PARAMS:
        value = params.value(key)
        path = (cwd / value).resolve()
        for kept, what in protected.items():
            how = ("is" if path == kept else "lies inside" if path.is_relative_to(kept)
                   else "holds" if kept.is_relative_to(path) else None)
            if how:
                raise ConfigError(f"{key} {value} {how} {what}, which no output may replace: "
                                  f"name another path ({Params().value(key)})")

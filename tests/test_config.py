import re
import subprocess
import sys

import pytest

from emovision.config import Params, load_params, params_from_dict
from emovision.errors import ConfigError
from tests.conftest import REPO


def test_repo_params_load_and_cover_every_field():
    params = load_params(REPO / "params.yaml")
    # The shipped file sets every key explicitly (each with its comment).
    text = (REPO / "params.yaml").read_text()
    for dotted in params.flat():
        assert f"  {dotted.split('.')[1]}:" in text, f"{dotted} missing from params.yaml"
    assert params.registry.model_name == "fer"
    assert params.data.source in ("auto", "fer2013", "synthetic")


def test_every_key_has_a_comment():
    for line in (REPO / "params.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "#" in line, f"uncommented key: {line.strip()}"


@pytest.mark.parametrize("raw, match", [
    ({"trian": {"epochs": 1}}, "unknown section 'trian' (did you mean 'train'?)"),
    ({"train": {"epoch": 1}}, "unknown key 'epoch' (did you mean 'epochs'?)"),
    ({"train": {"seed": 1}}, "section 'train' has no key 'seed'; it is base.seed"),  # the key of one other section
    # a value of the wrong type is told the key's range too, as `dvc exp run -S` users type it
    ({"train": {"lr": "fast"}}, "train.lr must be float > 0, got str 'fast'"),
    ({"train": {"lr": [0.1, 0.2]}}, "train.lr must be float > 0, got list [0.1, 0.2]"),
    ({"train": {"lr": None}}, "train.lr must be float > 0, got null (no value)"),
    ({"train": {"epochs": 1.5}}, "train.epochs must be int in [1, 10000], got float 1.5"),
    ({"train": {"channels_last": "yes"}}, "train.channels_last must be bool (true or false), got str 'yes'"),
    ({"distill": {"alpha": "half"}}, "distill.alpha must be float in [0, 1] (the weight"),
    ({"data": {"source": "imagenet"}}, "data.source must be one of auto | fer2013 | synthetic"),
    ({"model": {"dropout": 1.5}}, "model.dropout must be in [0, 1)"),
    ({"augment": {"app_view": 1.5}}, "augment.app_view must be in [0, 1] (a probability)"),
    ({"data": {"app_views": " "}}, "data.app_views must be a file name"),
    ({"tune": {"lr_low": 0.1, "lr_high": 0.01}}, "tune.lr_low must be > 0 and below tune.lr_high"),
    (["a"], "expected a mapping"),
])
def test_bad_params_fail_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        params_from_dict(raw)


def test_ints_accepted_for_floats_and_defaults_fill_in():
    p = params_from_dict({"train": {"lr": 1}})
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.train.epochs == Params().train.epochs


def test_replace_validates_overrides():
    p = Params().replace(**{"train.lr": 0.01, "model.dropout": 0.2})
    assert (p.train.lr, p.model.dropout) == (0.01, 0.2)
    with pytest.raises(ConfigError, match="unknown key 'dropot'"):
        Params().replace(**{"model.dropot": 0.2})


def test_cli_reports_bad_params_in_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epohcs: 3\n")
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(bad)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "unknown key 'epohcs' (did you mean 'epochs'?)" in out.stderr


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_code_defaults_match_params_yaml():
    # a params file may omit keys; their defaults must be what params.yaml documents
    assert load_params(REPO / "params.yaml") == Params()


@pytest.mark.parametrize("text, dotted, expected", [
    ("train:\n  lr: 3e-5\n", "train.lr", 3e-5),       # YAML 1.1 (PyYAML) reads these as strings
    ("train:\n  lr: 1e-3\n", "train.lr", 1e-3),
    ("train:\n  lr: 3e-05\n", "train.lr", 3e-5),      # what `dvc exp run -S train.lr=3e-5` writes
    ("train:\n  lr: 1E+0\n", "train.lr", 1.0),
    ("train:\n  lr: .5\n", "train.lr", 0.5),
    ("train:\n  epochs: 3\n", "train.epochs", 3),     # ints stay ints
    # a whole float is that int (DVC, comparing 2.0 == 2, would rerun nothing and leave it)
    ("train:\n  epochs: 2.0\n", "train.epochs", 2),
    ("base:\n  seed: 1_000\n", "base.seed", 1000),
    ("train:\n  amp: off\n", "train.amp", "off"),  # YAML 1.1 would read False
    ("train:\n  compile: true\n", "train.compile", True),
    ("train:\n  compile: False\n", "train.compile", False),
])
def test_yaml12_numbers(tmp_path, text, dotted, expected):
    (tmp_path / "p.yaml").write_text(text)
    section, key = dotted.split(".")
    value = getattr(getattr(load_params(tmp_path / "p.yaml"), section), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, match", [
    # the table, one line each, naming the file and the key
    ("model:\n  name: resnet50\n", "model.name: unknown model 'resnet50'"),
    ("train:\n  lr: .inf\n", "train.lr must be a finite number, got inf"),
    ("train:\n  lr: .nan\n", "train.lr must be a finite number"),
    ("evaluate:\n  batch_size: 0\n", "evaluate.batch_size must be in [1, 65536], got 0"),
    ("base:\n  seed: -1\n", "base.seed must be in [0, 4294967295], got -1"),
    ("augment:\n  scale: 1.5\n", "augment.scale must be in [0, 1)"),
    ("train:\n  warmup_epochs: -5\n", "train.warmup_epochs must be >= 0, got -5.0"),
    # a warm-up longer than the run never reaches train.lr: the schedule is all ramp, no decay
    ("train:\n  epochs: 2\n  warmup_epochs: 5\n",
     "train.warmup_epochs must be <= train.epochs (2): a longer warm-up never reaches train.lr, got 5.0"),
    ("train:\n  weight_decay: -1\n", "train.weight_decay must be >= 0, got -1.0"),
    ("", "the params file is empty"),
    ("# only a comment\n", "the params file is empty"),
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "duplicate key 'lr' at line 4 (first at line 2)"),
    ("train:\n  epochs: 2\ntrain:\n  lr: 0.2\n", "duplicate key 'train' at line 3 (first at line 1)"),
    ("registry:\n  model_name: ''\n", "registry.model_name must be a registered-model name"),
    ("paths:\n  models: ''\n", "paths.models must be a folder name"),
    ("bench:\n  repeats: 0\n", "bench.repeats must be in [1, 1000]"),
    # typos that would train for weeks or run out of memory fail at start
    ("model:\n  width: 4800\n", "model.width must be in [4, 512] (base channels; the shipped model has 48), got 4800"),
    ("train:\n  epochs: 80000\n", "train.epochs must be in [1, 10000], got 80000"),
    ("train:\n  batch_size: 1280000\n", "train.batch_size must be in [1, 65536], got 1280000"),
    ("train:\n  patience: 100000\n", "train.patience must be in [0, 10000] (0 disables), got 100000"),
    ("train:\n  threads: 40000\n", "train.threads must be in [0, 1024]"),
    ("tune:\n  n_jobs: 4000\n", "tune.n_jobs must be in [1, 256], got 4000"),
    ("demo:\n  width: 3200\n", "demo.width must be in [4, 512], got 3200"),
    ("data:\n  synthetic_train_per_class: 2000000\n", "data.synthetic_train_per_class must be in [5, 100000]"),
    ("tune:\n  timeout: -1\n", "tune.timeout must be >= 0 seconds"),
    ("train:\n  compile: yes\n", "train.compile must be bool (true or false), got str 'yes'"),
    ("augment:\n  hflip: on\n", "augment.hflip must be bool (true or false), got str 'on'"),
])
def test_bad_params_files(tmp_path, text, match):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(match)) as err:
        load_params(tmp_path / "p.yaml")
    assert str(err.value).startswith(str(tmp_path / "p.yaml")) and "\n" not in str(err.value)


def test_demo_caps_apply_only_to_the_demo_set():
    p = Params()
    demo = p.for_dataset("synthetic")
    assert (demo.train.epochs, demo.model.width) == (p.demo.epochs, p.demo.width)
    assert demo.train.lr == p.train.lr and p.for_dataset("fer2013") == p
    taught = p.replace(**{"distill.teachers": ("teachers/a",), "distill.alpha": 0.5})
    assert taught.for_dataset("synthetic").distill.teachers == () and taught.for_dataset("synthetic").distill.alpha == 0
    kept = taught.replace(**{"demo.distill": True}).for_dataset("synthetic")
    assert kept.distill.teachers == ("teachers/a",) and kept.distill.alpha == 0.5
    started = p.replace(**{"train.init": "teachers/a"})
    assert started.for_dataset("synthetic").train.init == "" and started.for_dataset("fer2013") == started
    assert started.replace(**{"demo.init": True}).for_dataset("synthetic").train.init == "teachers/a"
    # a FER2013 warm-up longer than the demo's epochs is capped with them, not refused
    long = p.replace(**{"train.warmup_epochs": 20.0}).for_dataset("synthetic")
    assert (long.train.epochs, long.train.warmup_epochs) == (p.demo.epochs, float(p.demo.epochs))
    shown = p.replace(**{"augment.app_view": 0.5})
    assert shown.for_dataset("synthetic").augment.app_view == 0 and shown.for_dataset("fer2013") == shown
    small = p.replace(**{"train.epochs": 2, "model.width": 8, "distill.teachers": (), "distill.alpha": 0.0})
    assert small.for_dataset("synthetic") == small  # caps, never raises


NUMBER = r"-?\d+(?:\.\d+)?"
RANGE_IN_COMMENT = re.compile(rf"(?:^|, )(?:(?P<low>{NUMBER})\.\.(?P<high>{NUMBER})|(?P<open>[\[(])(?P<lo>{NUMBER}), (?P<hi>{NUMBER})(?P<close>[\])]))")


def test_ranges_in_params_yaml_comments_are_the_ones_enforced():
    """The README sends users to params.yaml's comments for each key's range: `a..b` (both
    ends valid) or `[a, b)` / `(a, b]`. Each stated end must be accepted or refused as written,
    and a value just past it refused."""
    section, checked = None, 0
    for line in (REPO / "params.yaml").read_text().splitlines():
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
            continue
        found = re.match(r"^  (\w+): \S+\s+# (int|float): (.*)", line)
        if not found or not (r := RANGE_IN_COMMENT.search(found[3])):
            continue
        key, kind = f"{section}.{found[1]}", found[2]
        low, high = (r["low"], r["high"]) if r["low"] else (r["lo"], r["hi"])
        low_ok, high_ok = (True, True) if r["low"] else (r["open"] == "[", r["close"] == "]")
        cast = int if kind == "int" else float
        step = 1 if kind == "int" else 0.01
        for value, ok in [(cast(low), low_ok), (cast(high), high_ok), (cast(low) - step, False),
                          (cast(high) + step, False)]:
            if ok:
                Params().replace(**{key: value})
            else:
                with pytest.raises(ConfigError, match=re.escape(key)):
                    Params().replace(**{key: value})
        checked += 1
    assert checked >= 15  # the comments that state a range were all found


@pytest.mark.parametrize("typed", ["True", "TRUE", "False", "true", "yes", "on", "tRUE"])
def test_a_boolean_is_what_dvc_reads_and_writes(tmp_path, typed):
    """README said booleans are only `true` / `false`, yet `True` and `TRUE` load. They are YAML
    1.2 booleans, which DVC (ruamel) reads as booleans too, and `-S augment.hflip=True` writes
    `true`; YAML 1.1's yes/on stay strings for both. Whether typed into params.yaml or given to
    `-S`, a value is a bool here exactly when DVC takes it for one; otherwise it is refused."""
    from dvc.utils.hydra import apply_overrides
    from ruamel.yaml import YAML

    def agree(path):
        dvc_reads = YAML(typ="safe").load(path.read_text())["augment"]["hflip"]
        if isinstance(dvc_reads, bool):
            assert load_params(path).augment.hflip is dvc_reads
        else:
            with pytest.raises(ConfigError, match=f"augment.hflip must be bool .*, got str '{dvc_reads}'"):
                load_params(path)

    by_hand, by_dvc = tmp_path / "by_hand.yaml", tmp_path / "by_dvc.yaml"
    by_hand.write_text(f"augment:\n  hflip: {typed}\n")
    agree(by_hand)
    by_dvc.write_text("augment:\n  hflip: false\n")
    apply_overrides(by_dvc, [f"augment.hflip={typed}"])
    agree(by_dvc)


HAND_EDITS = {  # params.yaml bytes as editors leave them -> the one line, or None: loads as the original
    "bom": (lambda text: b"\xef\xbb\xbf" + text, None),
    "crlf": (lambda text: text.replace(b"\n", b"\r\n"), None),
    "tab": (lambda text: text.replace(b"\n  seed:", b"\n\tseed:"),
            "not valid YAML at line 7 (a tab character: YAML indents with spaces)"),
    "latin-1": (lambda text: text.replace(b"# int: seeds", b"# int: s\xe9eds"),
                "not UTF-8 text at line 7 (byte 0xe9): save it as UTF-8"),
}


@pytest.mark.parametrize("edit", list(HAND_EDITS))
def test_a_hand_edited_params_file_loads_or_is_one_line_naming_file_and_line(tmp_path, edit):
    """A tab said only 'not valid YAML at line 7', and a Latin-1 'é' in a comment ended every
    stage in a UnicodeDecodeError traceback; a BOM and CRLF line endings load as they should."""
    change, message = HAND_EDITS[edit]
    path = tmp_path / "params.yaml"
    path.write_bytes(change((REPO / "params.yaml").read_bytes()))
    if message is None:
        assert load_params(path) == load_params(REPO / "params.yaml")
    else:
        with pytest.raises(ConfigError) as err:
            load_params(path)
        assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://u:p@ss@db.host:5432/optuna", "postgresql://***@db.host:5432/optuna"),  # `@` in the password
    ("https://ghp_token@mlflow.host/", "https://***@mlflow.host/"),  # a lone token is a secret too
    ("mysql://db/optuna?charset=utf8&password=pw&api_key=k", "mysql://db/optuna?charset=utf8&password=***&api_key=***"),
    ("sqlite:////home/me/a@b/optuna.db", "sqlite:////home/me/a@b/optuna.db"),  # `@` in a path is no userinfo
    ("file:///data/R&D/keypoints=68/mlruns", "file:///data/R&D/keypoints=68/mlruns"),  # nor `&..key..=` in a path
])
def test_a_uri_is_shown_without_its_credentials_and_so_is_the_tune_storage_param(uri, shown):
    """tuning showed `user:***@` and tracking dropped the userinfo, and neither hid `?password=`;
    train logged params.flat() to MLflow, tune.storage's password with it. One function now."""
    from emovision.errors import shown_uri

    assert shown_uri(uri) == shown
    assert Params().replace(**{"tune.storage": uri}).flat()["tune.storage"] == shown

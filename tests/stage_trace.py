"""Run one stage and report what it really used: `python -m tests.stage_trace STAGE [args]`.

Prints one JSON line {"modules": [...], "params": [...]} after the stage's main() returns:
the project files (emovision/, stages/) imported while it ran, and the `section.key` params
it read. A param counts as read when code takes it from its section object; copying all
params wholesale (`Params.flat()` for MLflow and checkpoints, `replace()`, comparisons) does
not count, since that records params rather than acting on them, nor does validation
(every stage checks the whole file). tests/test_dvc.py compares
both lists with dvc.yaml.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
import typing
from pathlib import Path

from emovision import config

REPO = Path(__file__).resolve().parent.parent
READ: set[str] = set()
_SUSPENDED = [0]


def _suspending(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _SUSPENDED[0] += 1
        try:
            return func(*args, **kwargs)
        finally:
            _SUSPENDED[0] -= 1
    return wrapper


def _record_reads() -> None:
    hints = typing.get_type_hints(config.Params)
    for section in (f.name for f in dataclasses.fields(config.Params)):
        cls = hints[section]
        names = {f.name for f in dataclasses.fields(cls)}

        def getattribute(self, name, _section=section, _names=names):
            if name in _names and not _SUSPENDED[0]:
                READ.add(f"{_section}.{name}")
            return object.__getattribute__(self, name)

        cls.__getattribute__ = getattribute
        cls.__eq__ = _suspending(cls.__eq__)
        cls.__repr__ = _suspending(cls.__repr__)
    # with_epochs copies the warm-up, cut to the run, for whoever trains with it: not a use of it
    for name in ("flat", "replace", "with_epochs", "__eq__", "__repr__"):
        setattr(config.Params, name, _suspending(getattr(config.Params, name)))
    # validation looks at every key of the file (and every stage at every output path: stages.parse,
    # imported after this); that is checking, not using them
    config.params_from_dict = _suspending(config.params_from_dict)
    config.check_outputs_spare_the_project = _suspending(config.check_outputs_spare_the_project)


def project_files() -> list[str]:
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(REPO):
            rel = Path(path).resolve().relative_to(REPO)
            if rel.parts[0] in ("emovision", "stages"):
                files.add(rel.as_posix())
    return sorted(files)


def main() -> int:
    stage, argv = sys.argv[1], sys.argv[2:]
    _record_reads()
    code = importlib.import_module(f"stages.{stage}").main(argv)
    print(json.dumps({"code": code, "modules": project_files(), "params": sorted(READ)}))
    return code


if __name__ == "__main__":
    raise SystemExit(main())

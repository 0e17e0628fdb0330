"""Stage 0: check the whole params file, so that a key no later stage reads is refused too.

Each stage lists in dvc.yaml only the params it reads, so a key that is in no list (a typo
in a section listed key by key, or a new section) changes nothing DVC watches: `dvc exp run
-S +augmnt.hflip=false` (the `+` that DVC's own message suggests for a new key) ran nothing
and reported an experiment with the typo silently ignored. This stage depends on the whole
of params.yaml and is listed first in dvc.yaml, so any change to the file runs it first (DVC
runs stages in the order dvc.yaml lists them where the graph leaves a choice): a bad file
stops the run in one line (exit 2) before a later stage starts. It writes nothing.

Like every stage, it refuses an output path that is, holds or lies inside the project's
params.yaml, dvc.yaml, dvc.lock, pyproject.toml, .dvc/, .git/, mlflow.db, mlruns/ or optuna.db
(`stages.parse`). Under DVC it also refuses an output path outside the repository: DVC records
none there, so the stage wrote it (`data.app_views: ../views.npz` overwrote a file beside the
project) and DVC then failed with an empty 'failed to reproduce' line.
"""
from __future__ import annotations

import os
from pathlib import Path

from emovision.config import OUTPUT_PARAMS, Params
from emovision.errors import ConfigError, cli_main
from stages import parse, stage_parser

DVC_ROOT = "DVC_ROOT"  # set by DVC for every stage command: the repository's root


def check_outputs_inside(params: Params, root: Path) -> None:
    """Every output path of `params` lies inside `root`, else one ConfigError line naming the key."""
    for key in OUTPUT_PARAMS:
        path = Path(params.value(key))
        if not path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(f"{key} {path} is outside the DVC project {root}, where DVC records no "
                              f"output: name a path inside it ({Params().value(key)})")


@cli_main
def main(argv: list[str] | None = None) -> int:
    _, params = parse(stage_parser(__doc__.splitlines()[0]), argv)
    if os.environ.get(DVC_ROOT):
        check_outputs_inside(params, Path(os.environ[DVC_ROOT]))
    print(f"{len(params.flat())} params checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

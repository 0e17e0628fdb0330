"""Pipeline stages: thin `main()`s that read params, call the library and write outputs.

Each stage is one module and one entry in dvc.yaml: `python -m stages.<name> [--params PATH]`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emovision import progress
from emovision.config import DEFAULT_PARAMS, Params, check_outputs_spare_the_project, load_params


def stage_parser(description: str) -> argparse.ArgumentParser:
    # argparse names a module run with -m by its file (`usage: tune.py`), no command one can type
    script = Path(sys.argv[0])
    prog = f"python -m {script.parent.name}.{script.stem}" if script.parent.name == __name__ else None
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--params", default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines (per epoch, per 10%% of the work); results and errors still print")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    args = parser.parse_args(argv)
    progress.set_quiet(args.quiet)
    params = load_params(args.params)
    check_outputs_spare_the_project(params, args.params)  # before any stage writes: `-S paths.models=dvc.lock`
    return args, params


def open_store(keep: str | None = None) -> str:
    """Point MLflow at the project store (`tracking.setup`: the store answers, or one line) and
    mark KILLED the runs that processes of this machine killed outright (kill -9, a crash) left
    RUNNING, one line each, except the run `keep` (one the caller decides on itself); returns
    the experiment id. Every stage that logs calls this first."""
    from emovision import tracking  # only the stages that log import the tracking code

    experiment_id = tracking.setup()
    for run in tracking.end_orphaned_runs(experiment_id, keep):
        print(f"marked run {run.info.run_id} ({run.info.run_name}) KILLED: its process "
              f"({run.data.tags[tracking.OWNER_TAG]}) is gone")
    return experiment_id

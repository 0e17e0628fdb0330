"""Pipeline stages: thin `main()`s that read params, call the library and write outputs.

Each stage is one module and one entry in dvc.yaml: `python -m stages.<name> [--params PATH]`.
"""
from __future__ import annotations

import argparse

from emovision import progress
from emovision.config import DEFAULT_PARAMS, Params, load_params


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines (per epoch, per 10%% of the work); results and errors still print")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    args = parser.parse_args(argv)
    progress.set_quiet(args.quiet)
    return args, load_params(args.params)

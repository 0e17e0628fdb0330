"""Stage 0: check the whole params file, so that a key no later stage reads is refused too.

Each stage lists in dvc.yaml only the params it reads, so a key that is in no list (a typo
in a section listed key by key, or a new section) changes nothing DVC watches: `dvc exp run
-S +augmnt.hflip=false` (the `+` that DVC's own message suggests for a new key) ran nothing
and reported an experiment with the typo silently ignored. This stage depends on the whole
of params.yaml and is listed first in dvc.yaml, so any change to the file runs it first (DVC
runs stages in the order dvc.yaml lists them where the graph leaves a choice): a bad file
stops the run in one line (exit 2) before a later stage starts. It writes nothing.
"""
from __future__ import annotations

from emovision.errors import cli_main
from stages import parse, stage_parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    _, params = parse(stage_parser(__doc__.splitlines()[0]), argv)
    print(f"{len(params.flat())} params checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

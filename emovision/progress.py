"""Progress people can see, on a terminal and under `dvc repro` (where stdout is a pipe).

On a terminal `track` draws a tqdm bar; otherwise it prints one line each time another
`PERCENT_STEP` percent is done, so a log shows the work moving without a flood of lines.
`set_quiet(True)` (a stage's `--quiet`) silences progress and `info` lines; results and
errors still print.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
PERCENT_STEP = 10  # one line per 10% of the work when stdout is not a terminal

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """A progress line (epoch done, stage section started); silent with --quiet."""
    if not _quiet:
        print(message, flush=True)


def track(items: Iterable[T], total: int, desc: str, unit: str = "it") -> Iterator[T]:
    """Yield `items`, showing progress: a bar on a terminal, else a line per PERCENT_STEP %."""
    if _quiet or total <= 0:
        yield from items
        return
    if sys.stdout.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False)
        return
    started, next_percent = time.perf_counter(), PERCENT_STEP
    for done, item in enumerate(items, 1):
        yield item
        percent = 100 * done // total
        if percent >= next_percent:
            print(f"{desc}: {percent}% ({done:,}/{total:,} {unit}, {time.perf_counter() - started:.0f}s)",
                  flush=True)
            next_percent = (percent // PERCENT_STEP + 1) * PERCENT_STEP

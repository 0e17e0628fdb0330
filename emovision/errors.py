"""Errors a user can act on, and the one way command-line entry points report them."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

# Exit codes: 2 for bad input (params, data, model references, files), 130 for Ctrl-C.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class EmovisionError(Exception):
    """An expected failure caused by the user's input; printed as one line, no traceback."""


class ConfigError(EmovisionError):
    """params.yaml or a command-line override is invalid."""


class DataError(EmovisionError):
    """The raw dataset is missing or malformed."""


class ModelRefError(EmovisionError):
    """A model reference (registry URI, run URI, path) cannot be resolved."""


class TrainingDiverged(EmovisionError, ValueError):
    """The training loss became NaN or infinite (a ValueError too, so a tuning trial fails alone)."""


class SourceError(EmovisionError):
    """A camera, video, image or stream cannot be opened or read."""


def cli_main(func: F) -> Callable[..., int]:
    """Wrap a `main()` so expected errors end in one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            return func(*args, **kwargs) or 0
        except EmovisionError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper

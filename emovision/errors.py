"""Errors a user can act on, and the one way command-line entry points report them."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., int | None])

# Exit codes: 2 for bad input (params, data, model references, files) and outputs that cannot
# be written (a full disk), 130 for Ctrl-C (and `kill`, taken as Ctrl-C).
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # stdout's reader gone (`| head`): what a tool killed by SIGPIPE exits with
# A full disk, or a user over quota: the OS errors that free space (not a fix of the input) cures.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE_HINT = "no space left on the disk; free some space and run again"
# A full temp folder said only NO_SPACE_HINT beside a random temporary path (a model exported or
# downloaded there): nothing told the user that TMPDIR is the folder to free or move.
TEMP_FULL_HINT = ("no space left in the temp folder {folder} (TMPDIR); free some space there, or set TMPDIR "
                  "to a folder on a disk with room, and run again")
# Free space below which a disk counts as full: a write that failed there failed for want of
# space (a video frame or checkpoint chunk is larger; a disk that filled up has ~0 left).
FULL_DISK_BYTES = 1 << 20
# What tempfile names a file or folder it makes without a prefix (ours, MLflow's, torch's): "tmp" and
# 8 random characters. A project or an output under /tmp is no temporary file.
_TEMP_NAME = re.compile(r"tmp[a-z0-9_]{8}")
SQLITE_FULL = 13  # sqlite3's "database or disk is full" (mlflow.db, optuna.db on a full disk)

# The credentials a URI can carry: its userinfo (`user:password@`, or a lone token: `https://<token>@host`,
# which cannot be told from a user name) and query values named like secrets (`?password=`, `&token=`;
# SQLAlchemy passes them to the driver). A password holding `/`, `?` or `#` must be %-encoded to be
# parsed as one; unencoded, it ends the userinfo where parsers end it too. A query key holds no `/`: a
# path's `R&D/keypoints=68/` is no key, and the store's path must be shown as it is to be found.
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")
_SECRET_QUERY = re.compile(r"(?i)([?&;][^=&;#/\s]*(?:pass|pwd|token|secret|key|auth|credential)[^=&;#/\s]*=)[^&;#\s]*")
HIDDEN = "***"


def shown_uri(text: str) -> str:
    """`text` (a URI, or a message that quotes one) as a user may see it: printed, raised or logged
    to MLflow, every userinfo shown as `***@` and every secret query value as `***`; scheme,
    host, port, path and other parameters kept. The one way a tracking URI or storage URL is shown."""
    return _SECRET_QUERY.sub(rf"\1{HIDDEN}", _USERINFO.sub(f"{HIDDEN}@", text))


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


class OutputError(EmovisionError):
    """An output cannot be written (a full disk); the file it would replace is left as it was."""


def no_space(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from or while handling (torch wraps the OS's
    error in its own, MLflow SQLite's), says the disk is full."""
    return any((isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS)
               or getattr(e, "sqlite_errorcode", None) == SQLITE_FULL for e in _chain(err))


def _chain(err: BaseException | None) -> list[BaseException]:
    """`err` and the errors it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    while err is not None and all(err is not e for e in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def temp_folder_holding(path: str | Path) -> Path | None:
    """The temp folder (TMPDIR, else the system's) when `path` is a temporary file in it (one
    that tempfile named, or inside such a folder), else None. A folder tempfile made that the
    working folder lies in is the user's (a project in a TemporaryDirectory, a test's): its files
    are outputs, and freeing or moving TMPDIR would not make room for them."""
    folder, path = Path(tempfile.gettempdir()).resolve(), Path(path).resolve()
    if not path.is_relative_to(folder) or path == folder:
        return None
    made = folder / path.relative_to(folder).parts[0]
    cwd = _working_folder()
    if not _TEMP_NAME.fullmatch(made.name) or (cwd is not None and cwd.is_relative_to(made)):
        return None
    return folder


def _working_folder() -> Path | None:
    """The working folder, or None when it is gone (deleted under the process)."""
    try:
        return Path.cwd().resolve()
    except OSError:
        return None


def no_space_line(err: BaseException) -> str:
    """The one line for an error that says the disk is full (`no_space`): the file it names (its
    own, or the OS error's it came from), and the temp folder as the one to free when that file
    is a temporary one (or, naming none, when the temp folder's disk is full and the working
    folder's is another)."""
    path = next((e.filename for e in _chain(err) if isinstance(e, OSError) and e.filename), None)
    if path is None:  # a write names no file (Python's own file.write): the temp folder, if it is the full one
        folder, cwd = Path(tempfile.gettempdir()), _working_folder()
        full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
        # the working folder on that disk too (a project under /tmp): its own write may be the one that failed
        apart = cwd is not None and os.stat(cwd).st_dev != os.stat(folder).st_dev
        return f"error: {TEMP_FULL_HINT.format(folder=folder) if full and apart else NO_SPACE_HINT}"
    temp = temp_folder_holding(path)
    return f"error: {TEMP_FULL_HINT.format(folder=temp)} ({path})" if temp else f"error: {NO_SPACE_HINT} ({path})"


def _drop_unwritten_stdout() -> None:
    """Discard what stdout could not write (a full disk under `> file`), so the interpreter's
    own flush at exit does not print a second error with a traceback."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stdout without a file (captured): nothing is flushed at exit
            pass


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (`| head` has read its lines)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or a stdout without a file
        return False


def _as_ctrl_c(signum, frame) -> None:
    """SIGTERM's handler: do what Ctrl-C does at this moment (raise KeyboardInterrupt, or what a
    block that holds or handles Ctrl-C does with it: `fileio.ctrl_c_held`, the webcam's stop)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signum, frame)  # SIGTERM: a block that holds Ctrl-C tells a kill from it
    else:  # Ctrl-C ignored (a background job): a kill must still stop the command
        raise KeyboardInterrupt


@contextlib.contextmanager
def kill_as_ctrl_c():
    """Take `kill` (SIGTERM, also what `timeout`, systemd and `docker stop` send) as Ctrl-C for
    the block: by default it ended the process on the spot, so the webcam's --output and --log
    were lost and MLflow runs and Optuna trials stayed RUNNING until a later command ended them."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_main(func: F) -> Callable[..., int]:
    """Wrap a `main()` so expected errors end in one line on stderr and a non-zero exit, and
    `kill` stops it as Ctrl-C does."""

    @functools.wraps(func)
    @kill_as_ctrl_c()
    def wrapper(*args, **kwargs) -> int:
        try:
            code = func(*args, **kwargs) or 0
            sys.stdout.flush()  # here, not at exit: a full disk under `> file` is said like any error
            return code
        except EmovisionError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `predict ... | head`: the reader has what it wanted; quietly stop
            if not _stdout_reader_gone():
                raise
            _drop_unwritten_stdout()
            return EXIT_BROKEN_PIPE
        except Exception as err:  # a write not made through fileio (stdout, MLflow's artifact copies)
            if not no_space(err):
                raise
            _drop_unwritten_stdout()
            print(no_space_line(err), file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper

"""Atomic file writes: a crash, Ctrl-C or a bad input never leaves a half-written output.

Every output the project writes (checkpoints, reports, logs, videos, params.yaml edits)
goes through `atomic_path`: the data is written to a hidden temporary name in the target's
folder and renamed over the target only when the writer finished without an error. A folder
written whole (data/prepared/) goes through `atomic_folder` the same way, and a set of files
read together (evaluate's reports) through `atomic_files`.

A kill -9 leaves the temporary behind, so each records its owner (`this_process()`: this
machine and PID) in its name, and the next writer of the same target removes those whose
owner is gone (`owner_gone`). MLflow runs and Optuna trials record the same owner
(`tracking.OWNER_TAG`, `tuning.OWNER_ATTR`), so a later process can end what a killed one
left RUNNING.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from emovision.errors import (FULL_DISK_BYTES, NO_SPACE_HINT, TEMP_FULL_HINT, ConfigError, DataError, OutputError,
                              no_space, temp_folder_holding)

DEFAULT_FILE_MODE = 0o644  # what a plain open() gives under the usual umask; mkstemp gives 0600
DEFAULT_FOLDER_MODE = 0o755  # likewise for mkdir; mkdtemp gives 0700
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same content gives the same bytes
PARTIAL = ".partial"  # a temporary file's name: .<target>.<owner>.<random>.partial[<suffix>]
OWNER = r"(?P<machine>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)"  # what this_process() gives
TEMP_RANDOM = r"[a-z0-9_]+"  # the random part tempfile adds to a name


# ---------------------------------------------------------------- owners


@functools.cache
def _machine() -> str:
    """This machine as a name part: the host name, and the PID namespace where there is one
    (containers that share a host name do not see each other's processes)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    try:
        return f"{host}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


def this_process() -> str:
    """The owner a temporary file, folder, MLflow run or Optuna trial records: `<machine>.<pid>`."""
    return process_owner(os.getpid())


def process_owner(pid: int) -> str:
    """The process `pid` of this machine as an owner (this_process() for another, a parent)."""
    return f"{_machine()}.{pid}"


def owner_gone(owner: str | None) -> bool:
    """Whether the process `owner` names is known to be gone: it ran on this machine and no
    process has its PID now. Another machine's process (or no owner) is never judged gone: from
    here it cannot be seen; a PID used again only keeps a stale thing longer."""
    match = re.fullmatch(OWNER, owner or "")
    if match is None or match["machine"] != _machine():
        return False
    pid = int(match["pid"])
    if pid == os.getpid() or os.name != "posix":
        # On Windows os.kill(pid, 0) is not a question: 0 is CTRL_C_EVENT, sent to the process
        # group, and any other number terminates the process. There nothing is judged gone.
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


# ---------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, else it is removed.

    The result keeps the mode of the file it replaces (or 0644 for a new file). `suffix`
    keeps an extension for writers that pick a format from it (cv2.VideoWriter: ".mp4").
    """
    path = Path(path)
    if path.is_dir():  # an OutputError, so every command says it in one line, not a traceback
        raise unwritten(path, "it is a folder")
    if is_stream(path):  # renamed over, /dev/null became a file (as root) and a named pipe's reader got nothing
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{this_process()}.", suffix=f"{PARTIAL}{suffix}",
                                    dir=path.parent)
    except OSError as err:  # `unwritable` asks os.access, which says yes to root where the file system says no
        raise_if_no_space(err, path)
        raise unwritten(path, f"cannot create a file in {path.parent} ({err.strerror or err})") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else DEFAULT_FILE_MODE)
        os.replace(tmp, path)
    except Exception as err:
        raise_if_no_space(err, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def is_stream(path: Path) -> bool:
    """Whether `path` is a device, named pipe or socket (`--log /dev/stdout`, a fifo a reader waits
    on) or names an open file descriptor (/dev/stdout, /dev/fd/1 with `> out.txt`): written in place,
    as there is no file of its own to keep whole, and renaming over it destroys it (as root, /dev/null
    and the /dev/stdout link became files)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return not path.is_dir()
        named = [path, path.parent / os.readlink(path)] if path.is_symlink() else [path]
    except OSError:  # missing, or a link to nothing: a file to create
        return False
    return any(re.fullmatch(r"/proc/\d+/fd", os.path.realpath(p.parent)) for p in named)


def disk_full(folder: str | Path) -> bool:
    """Whether the disk of `folder` is (all but) full: how a writer that reports no error of its
    own (OpenCV's video writer) is known to have failed for want of space."""
    return shutil.disk_usage(folder).free < FULL_DISK_BYTES


def raise_if_no_space(err: BaseException, path: Path) -> None:
    """An OutputError line for `path` when `err` says its disk is full (what was there is kept).
    The OS error stays its cause, so a writer around this one (a file checked under a temporary
    name, then renamed) names its own target instead."""
    if not no_space(err):
        return
    temp = temp_folder_holding(path)
    if temp is not None:  # a temporary file (a model exported or downloaded there), no output of the user's
        raise OutputError(f"cannot write {path}: {TEMP_FULL_HINT.format(folder=temp)}") from err
    raise unwritten(path, NO_SPACE_HINT) from err


def unwritten(path: Path, why: str) -> OutputError:
    """The one line for an output that could not be written: which, why, and what is left."""
    kept = f"{path} is as it was" if path.exists() else f"nothing was written to {path}"
    return OutputError(f"cannot write {path}: {why} ({kept})")


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove (and return) the temporaries that killed writers of `path` left beside it; a live
    writer's (another process, or a thread of this one) is left alone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{OWNER}\.{TEMP_RANDOM}{re.escape(PARTIAL)}.*")
    removed = []
    for partial in path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL}*"):
        match = pattern.fullmatch(partial.name)
        if match and owner_gone(f"{match['machine']}.{match['pid']}"):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


# ---------------------------------------------------------------- folders


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) while the block runs and deliver it after, so steps that belong
    together (moving the old folder aside, renaming the new one in) are never split by it.
    Only the main thread receives signals; elsewhere the block runs as it is."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and not callable(previous) and signal.SIGTERM in held:
            # a kill (errors.kill_as_ctrl_c) where Ctrl-C is ignored (a script's background job):
            # SIGINT raised again would be ignored and the kill lost
            raise KeyboardInterrupt
        if held:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; on success it replaces `path` whole, else
    it is removed. Moving the old folder aside, renaming the new one in and deleting the old
    one run with Ctrl-C held (a Ctrl-C between the renames left no `path`); what a kill -9
    there leaves, `recover_folder` repairs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else DEFAULT_FOLDER_MODE
    owner = this_process()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{owner}-", dir=path.parent))
    old = path.with_name(f".{path.name}.old-{owner}-{tmp.name.rsplit('-', 1)[1]}")
    try:
        yield tmp
        os.chmod(tmp, mode)
        with ctrl_c_held():
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_no_space(err, path)
        raise


STAGED = ".staged"  # a file set's temporary folder: .staged.<owner>.<random>.partial


@contextlib.contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder inside `folder`; the files written there replace their
    namesakes in `folder` together when the block succeeds, else none does and it is removed.

    For outputs that are read as one set (evaluate's reports) in a folder that holds other
    outputs too, so the folder cannot be swapped whole: every file is written before any is
    renamed, and the renames run back to back with Ctrl-C held, so a failure or interrupt
    while writing (a full disk, a plot that fails) keeps the previous set whole. A kill -9
    leaves the temporary folder, which the next writer of `folder` removes (its owner gone).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"{re.escape(STAGED)}\.{OWNER}\.{TEMP_RANDOM}{re.escape(PARTIAL)}")
    for stale in folder.glob(f"{STAGED}.*{PARTIAL}"):
        match = pattern.fullmatch(stale.name)
        if match and owner_gone(f"{match['machine']}.{match['pid']}"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGED}.{this_process()}.", suffix=PARTIAL, dir=folder))
    try:
        yield tmp
        staged = sorted(tmp.iterdir())
        for new in staged:  # every target checked before any rename: a folder named metrics.json
            why = unwritable(folder / new.name)  # failed the 3rd rename, leaving a mixed set
            if why:
                raise unwritten(folder / new.name, f"it {why}; none of the {len(staged)} files was replaced")
        for new in staged:  # keep each replaced file's mode, as atomic_path does
            target = folder / new.name
            os.chmod(new, stat.S_IMODE(target.stat().st_mode) if target.is_file() else DEFAULT_FILE_MODE)
        with ctrl_c_held():
            for new in staged:
                os.replace(new, folder / new.name)
    except BaseException as err:
        raise_if_no_space(err, folder)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_folder(path: str | Path) -> list[str]:
    """Repair what writers of `path` that are gone (kill -9; Ctrl-C before `ctrl_c_held`) left
    beside it: with `path` missing, the old folder they moved aside is renamed back; their
    other temporary folders are removed. A live writer's are left alone. Returns a line per
    thing done."""
    path = Path(path)
    # `old-<pid>`: the name before owners carried the machine (always this machine's then)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(?P<kind>tmp|old)-{OWNER}-{TEMP_RANDOM}|old-(?P<bare>[0-9]+))")
    done = []
    for found in sorted(path.parent.glob(f".{glob.escape(path.name)}.*-*")):  # old before tmp
        match = pattern.fullmatch(found.name)
        if match is None or not found.is_dir():
            continue
        owner = f"{_machine()}.{match['bare']}" if match["bare"] else f"{match['machine']}.{match['pid']}"
        if not owner_gone(owner):
            continue
        if match["kind"] != "tmp" and not path.exists():
            os.replace(found, path)
            done.append(f"restored {path}/ from {found.name}/, where an interrupted writer had moved it")
        else:
            shutil.rmtree(found, ignore_errors=True)
            done.append(f"removed {found}/, left by an interrupted writer of {path}/")
    return done


@contextlib.contextmanager
def folder_lock(folder: str | Path, writer: str, started_by: str) -> Iterator[None]:
    """Hold `folder` (made if missing) for one writer: an exclusive flock on the folder itself,
    so there is no lock file to leave behind, and the lock dies with the process (kill -9
    included). Another process holding it is a DataError naming it (`lock_holder`), or, where it
    cannot be told, the commands that start such a `writer` (`started_by`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; writers are not serialised there
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(folder)
            who, stop = (f"PID {holder[0]}: {holder[1]}", f" (kill {holder[0]})") if holder else (started_by, "")
            raise DataError(f"{writer} is running in {folder}/ ({who}); wait for it to end or stop it{stop}, "
                            "then run this again") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(folder: Path, locks: str | None = None) -> tuple[int, str] | None:
    """(PID, command line) of the process holding the flock on `folder`, from Linux's /proc/locks
    (`1: FLOCK  ADVISORY  WRITE 6365 fe:00:2327374 0 EOF`: PID, then device and inode; `locks` is
    that file's text, read when None); None elsewhere, or when it cannot be read. A `kill` of dvc's
    own PID ends dvc and leaves the stage it ran holding the lock, out of sight: the user needs the
    PID to stop it."""
    try:
        st = os.stat(folder)
        locks = Path("/proc/locks").read_text() if locks is None else locks
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for fields in (line.split() for line in locks.splitlines()):
        if "FLOCK" in fields and "->" not in fields and where in fields:  # "->": a waiter, not the holder
            pid = int(fields[fields.index(where) - 1])
            if pid <= 0:  # a holder in another PID namespace (older kernels): `kill 0` would end the user's group
                return None
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
            except OSError:  # gone meanwhile, or in another PID namespace
                return pid, "?"
            return pid, command.decode(errors="replace")
    return None


def user_path(text: str) -> Path:
    """A path as a user typed it, `~` expanded: the shell leaves `--output=~/out.mp4` and a quoted
    "~/out.mp4" as they are, and they made a folder named `~` in the working directory. An argparse
    `type`: an empty text is refused there, naming the flag, since Path("") is the working folder
    (`--output "$OUT"` with OUT unset was refused as "--output . is a folder", a name never typed)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?): give a file name")
    return Path(os.path.expanduser(text))


def unwritable(path: str | Path) -> str | None:
    """Why no file can be written at `path`, or None: it is a folder, it lies below a file, or
    the nearest folder of it that exists is not writable (missing folders can be made)."""
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    if is_stream(path):  # written in place (`atomic_path`): its folder (/dev) need not be writable
        return None if os.access(path, os.W_OK) else "is not writable"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            if not os.access(parent, os.W_OK):
                return f"folder {parent} is not writable"
            return None
    return None


def npz_with(path: str | Path, keys: tuple[str, ...]) -> bool:
    """Whether `path` is an .npz holding exactly the arrays `keys` (what `write_npz` wrote),
    judged by its member names alone: no array is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sorted(zf.namelist()) == sorted(f"{k}.npy" for k in keys)
    except (OSError, zipfile.BadZipFile):
        return False


ZIP_MAGIC = b"PK"  # every .npz is a zip file
DAMAGED = "delete it, then "  # read_npz's advice for a file it cannot read, before the caller's redo


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def check_replaceable_file(path: str | Path, key: str, keys: tuple[str, ...], example: str) -> None:
    """The param `key` names `path`, an .npz of `keys` that a stage replaces: it must be writable
    and new, or an earlier output of ours. Outputs persist in DVC (it no longer deletes them
    first), so a path naming the user's own file (notes.txt) would be overwritten by the stage."""
    path = Path(path)
    why = unwritable(path)
    if why:
        raise ConfigError(f"{key} {path} cannot be written ({why}): name a new file ({example})")
    if path.exists() and not npz_with(path, keys):
        # a zip that is no npz of ours may be one of ours cut short (a full disk, a partial copy),
        # which the reader tells the user to delete: say that here too, or each points to the other
        damaged = ", or delete it if it is a damaged output of this stage" if _starts_with(path, ZIP_MAGIC) else ""
        raise ConfigError(f"{key} {path} is a file this project did not write (not an .npz of "
                          f"{', '.join(keys)}); the stage would overwrite it: name a new file ({example}){damaged}")


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Atomically write an uncompressed .npz (np.load reads it) whose bytes depend only on its
    content (fixed member timestamps), so a DVC output rewritten with the same arrays keeps its hash."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), buffer.getvalue())
    return Path(path)


def read_npz(path: str | Path, keys: tuple[str, ...], what: str, redo: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of the .npz at `path` (no pickles), or one DataError line saying what
    is wrong: no file, not a `what` (keys missing), or unreadable (truncated, foreign), then `redo`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no {what}; {redo}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path}: not a {what} (no {', '.join(missing)}); {redo}")
            return {k: data[k] for k in keys}
    except DataError:
        raise
    except Exception as err:  # a truncated or foreign file: zipfile, numpy and OS errors alike
        raise DataError(f"{path}: unreadable {what} ({type(err).__name__}): {DAMAGED}{redo}") from None

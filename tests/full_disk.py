"""Run a command with a folder on a real full disk: a small tmpfs mounted in a private mount
namespace (`unshare`), so nothing outside the command's process sees it and it vanishes with it.

    run_on_full_disk(disk, files, cmd, free) -> (exit status, stderr); the disk's files after
    the run are copied to <disk>.after/ for the test to read.

Root mounts it in a new mount namespace; another user in a user namespace where it is root
(`unshare --map-root-user`); where neither is allowed the tests that use it skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DISK_SIZE = "4m"  # the tmpfs: room for the files a test puts there; the rest is filled
FILLER = ".filler"
CHUNK = 4096  # tmpfs allocates whole pages: the free space left is a multiple of this


def unshare_prefix() -> list[str] | None:
    """The command that runs another in a private mount namespace here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    prefix = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", "/mnt"],
                           capture_output=True)
    return prefix if probe.returncode == 0 else None


def run_on_full_disk(disk: Path, files: dict[str, Path], cmd: list[str], free: int = 0,
                     cwd: Path | None = None, env: dict | None = None) -> tuple[int, str]:
    """Mount a tmpfs at `disk` (made), copy `files` (name -> source) onto it, fill it to leave
    `free` bytes, run `cmd`; returns its exit status and stderr, and leaves a copy of what the
    disk held after the run (the filler left out) in `<disk>.after/`."""
    prefix = unshare_prefix()
    if prefix is None:
        import pytest

        pytest.skip("no private mount namespace here (unshare) for a small tmpfs")
    disk.mkdir(parents=True, exist_ok=True)
    spec = {"disk": str(disk), "files": {k: str(v) for k, v in files.items()}, "cmd": cmd, "free": free,
            "cwd": str(cwd or disk.parent)}
    proc = subprocess.run([*prefix, sys.executable, "-m", "tests.full_disk", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr  # the driver itself
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["rc"], result["stderr"]


def _drive(spec: dict) -> None:
    disk = Path(spec["disk"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(disk)], check=True)
    for name, source in spec["files"].items():
        shutil.copy(source, disk / name)
    fd, written = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT), 0
    try:  # fill to the last page, then give back `free` bytes
        while True:
            written += os.write(fd, b"\0" * CHUNK)
    except OSError:
        pass
    os.ftruncate(fd, max(0, written - written % CHUNK - spec["free"]))
    os.close(fd)
    proc = subprocess.run(spec["cmd"], cwd=spec["cwd"], capture_output=True, text=True)
    after = disk.with_name(disk.name + ".after")
    shutil.copytree(disk, after, ignore=shutil.ignore_patterns(FILLER), dirs_exist_ok=True)
    print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr}))


if __name__ == "__main__":
    _drive(json.loads(sys.argv[1]))

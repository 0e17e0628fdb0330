"""Atomic writes against real processes: what a kill -9 leaves is cleaned up, a live writer's never."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from emovision import fileio
from tests.conftest import REPO

WRITER = """
import sys, time
from emovision import fileio
with fileio.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half a file")
    print("writing", flush=True)
    time.sleep(120)
"""


def start_writer(target) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_killed_writers_partial_is_removed_by_the_next_writer_and_a_live_ones_kept(tmp_path):
    """kill -9 mid-write left a hidden .out.json.*.partial for good. The next writer of the
    target now removes the partials whose process is gone, never a running writer's."""
    target = tmp_path / "out.json"
    killed, live = start_writer(target), start_writer(target)
    try:
        partials = {p.name for p in tmp_path.glob(".out.json.*.partial")}
        assert len(partials) == 2
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        fileio.write_json(target, {"ok": 1})
        assert json.loads(target.read_text()) == {"ok": 1}
        left, = tmp_path.glob(".out.json.*.partial")
        assert left.name in partials and f".{live.pid}." in left.name
    finally:
        live.kill()
        live.wait()

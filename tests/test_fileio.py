"""Atomic writes against real processes: what a kill -9 leaves is cleaned up, a live writer's never."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from emovision import fileio
from tests.conftest import REPO

WRITER = """
import sys, time
import pytest

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


def test_owner_liveness_never_signals_a_process_off_posix(monkeypatch):
    """On Windows `os.kill(pid, 0)` is no question: 0 is CTRL_C_EVENT (it interrupts the
    process group) and other numbers terminate the process. There an owner is never judged
    gone, and nothing is sent to it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owner = f"{fileio._machine()}.{gone.pid}"
    assert fileio.owner_gone(owner)  # POSIX: a finished process is gone
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    with monkeypatch.context() as windows:
        windows.setattr(os, "name", "nt")
        judged_gone = fileio.owner_gone(owner)
    assert not judged_gone and sent == []


SAVE_CHECKPOINT = """
import sys
from pathlib import Path
from emovision.errors import cli_main
from tests.media import model_ref

@cli_main
def main():
    model_ref(sys.argv[1])  # stages.train's checkpoint writer

sys.exit(main())
"""


def test_a_checkpoint_written_to_a_full_disk_is_one_line_and_keeps_the_earlier_one(tmp_path):
    """On a full disk torch.save said `RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos 128 vs 0` with a traceback (models/ on a full disk: train, promote, ship).
    Now one line names the file and the cause, exit 2, and the earlier checkpoint is kept."""
    from tests.full_disk import run_on_full_disk
    from tests.media import model_ref

    earlier, disk = Path(model_ref(tmp_path)), tmp_path / "disk"
    rc, err = run_on_full_disk(disk, {"model.pt": earlier}, [sys.executable, "-c", SAVE_CHECKPOINT, str(disk)],
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    target = disk / "model.pt"
    assert err.strip() == (f"error: cannot write {target}: no space left on the disk; free some space and run "
                           f"again ({target} is as it was)"), err
    assert rc == 2
    after = disk.with_name("disk.after")
    assert [p.name for p in after.iterdir()] == ["model.pt"]  # no partial left behind
    assert (after / "model.pt").read_bytes() == earlier.read_bytes()


WRITE_IN_TEMP = """
import sys, tempfile
from pathlib import Path
from emovision import fileio
from emovision.errors import cli_main

BIG = b"x" * (1 << 20)  # more than the 16 KiB left
scratch = Path(tempfile.mkdtemp())  # what an ONNX export or an MLflow download writes into
cli_main(lambda: fileio.write_text(scratch / "fer.onnx", BIG.decode()) and None)()  # through fileio
cli_main(lambda: (scratch / "model.bin").write_bytes(BIG) and None)()  # a library's own write
cli_main(lambda: fileio.write_text(Path(sys.argv[1]) / "out.txt", BIG.decode()) and None)()  # an output there
"""


def test_a_full_temp_folder_is_named_as_such(tmp_path):
    """TMPDIR on a full disk (a model exported or downloaded there) said `no space left on the
    disk` beside a random temporary path, and `nothing was written to` it: nothing told the user
    that the temp folder is what to free, or to move. A file tempfile made there now names the
    temp folder (TMPDIR); an output that merely lies on that disk still names itself."""
    from tests.full_disk import run_on_full_disk

    disk = tmp_path / "disk"  # 16 KiB free, so that Python takes it as TMPDIR (a full one it skips)
    rc, err = run_on_full_disk(disk, {}, [sys.executable, "-c", WRITE_IN_TEMP, str(disk)], free=16384,
                               env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(disk)})
    temp_full = (f"no space left in the temp folder {disk} (TMPDIR); free some space there, or set TMPDIR to a "
                 f"folder on a disk with room, and run again")
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert re.fullmatch(rf"error: cannot write {disk}/tmp\w{{8}}/fer\.onnx: {re.escape(temp_full)}", lines[0]), err
    assert lines[1] == f"error: {temp_full}"  # Python's write names no file: the temp folder, whose disk is full
    assert lines[2] == (f"error: cannot write {disk / 'out.txt'}: no space left on the disk; free some space and run "
                        f"again (nothing was written to {disk / 'out.txt'})")

PROJECT_IN_TEMP = """
import os, sys, tempfile
from pathlib import Path
from emovision import fileio
from emovision.errors import cli_main

tempfile.gettempdir()  # found before the disk fills (a full one it skips), as torch and MLflow find it
BIG = b"x" * (1 << 20)  # more than the 16 KiB left
project = Path(sys.argv[1])
project.mkdir(parents=True)
os.chdir(project)
cli_main(lambda: fileio.write_text(Path("out.txt"), BIG.decode()) and None)()  # its output, through fileio
cli_main(lambda: Path("plain.bin").write_bytes(BIG) and None)()  # its own write, naming no file
"""


def test_a_full_disk_under_a_project_in_the_temp_folder_is_no_full_temp_folder(tmp_path):
    """A project working in a folder tempfile made (a TemporaryDirectory, as tests make), or on
    the temp folder's disk, was told its disk was the temp folder, to be freed or moved with
    TMPDIR: no help, its own files are what the disk holds. Its files say the plain line."""
    from tests.full_disk import run_on_full_disk

    disk = tmp_path / "disk"
    for project in (disk / "tmpab12cd_3" / "proj", disk / "proj"):
        rc, err = run_on_full_disk(disk, {}, [sys.executable, "-c", PROJECT_IN_TEMP, str(project)], free=16384,
                                   env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(disk)})
        assert err.strip().splitlines() == [
            f"error: cannot write out.txt: no space left on the disk; free some space and run again (nothing was "
            f"written to out.txt)",
            "error: no space left on the disk; free some space and run again"], err


CLI_WRITER = """
import sys, time
import pytest

from emovision import fileio
from emovision.errors import cli_main

@cli_main
def main():
    with fileio.atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half a file")
        print("writing", flush=True)
        time.sleep(120)

sys.exit(main())
"""


def test_kill_stops_a_command_as_ctrl_c_does(tmp_path):
    """`kill PID` (SIGTERM; `timeout`, systemd and `docker stop` send it too) ended a command on
    the spot: no cleanup ran (its partial files, MLflow runs and Optuna trials were left for a
    later command to find) and the webcam lost its whole recording. Now it is Ctrl-C: cleanup
    runs, one line says `interrupted`, exit 130."""
    target = tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, "-c", CLI_WRITER, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip()) == (130, "interrupted")
    assert list(tmp_path.iterdir()) == []  # the partial removed, nothing at the target


PRINTER = """
import sys
from emovision.errors import cli_main

@cli_main
def main():
    for i in range(int(sys.argv[1])):
        print("line", i)

sys.exit(main())
"""


@pytest.mark.parametrize("lines", [1, 100_000])  # still buffered when main returns; written (and failing) in main
def test_a_reader_that_stops_early_ends_a_command_quietly(lines):
    """`predict ... | head -1`: cli_main's flush of stdout (2aecf62) put a traceback of
    BrokenPipeError where Python had said `Exception ignored ... BrokenPipeError` (exit 120);
    output larger than the buffer ended in a traceback from print. Now nothing is said, exit
    141 (what a tool killed by SIGPIPE exits with)."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command writes
    try:
        proc = subprocess.run([sys.executable, "-c", PRINTER, str(lines)], stdout=write, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


HELD_IN_THE_BACKGROUND = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # what bash gives a script's background job (`cmd &`)
from emovision import fileio
from emovision.errors import cli_main

@cli_main
def main():
    with fileio.ctrl_c_held():
        print("held", flush=True)
        time.sleep(2)
    time.sleep(60)
    print("ran to the end")

sys.exit(main())
"""


def test_a_kill_while_ctrl_c_is_held_in_a_background_job_still_stops_it():
    """A kill during a block that holds Ctrl-C (a promotion's two writes, a folder's renames) was
    held as a Ctrl-C and raised again as SIGINT after the block: in a background job, where
    SIGINT is ignored, that was the end of it and the command ran on to exit 0. Now it stops
    after the block, as a kill does elsewhere: 'interrupted', exit 130."""
    proc = subprocess.Popen([sys.executable, "-c", HELD_IN_THE_BACKGROUND], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out, err) == (130, "", "interrupted\n")
    finally:
        proc.kill()
        proc.wait()


def test_a_file_set_whose_target_is_a_folder_replaces_none_of_its_files(tmp_path):
    # renamed one by one, the set failed at metrics.json and left this run's first three files
    # beside the previous run's last one
    reports = tmp_path / "reports"
    reports.mkdir()
    names = ("confusion.json", "evaluation.json", "metrics.json", "per_class_f1.png")
    for name in names:
        (reports / name).write_text("old")
    (reports / "metrics.json").unlink()
    (reports / "metrics.json").mkdir()
    with pytest.raises(fileio.OutputError, match=r"metrics\.json: it is a folder; none of the 4"):
        with fileio.atomic_files(reports) as staged:
            for name in names:
                (staged / name).write_text("new")
    assert sorted(p.name for p in reports.iterdir()) == sorted(names)  # the staging folder removed
    assert [(reports / n).read_text() for n in names if n != "metrics.json"] == ["old"] * 3


def test_a_named_pipe_is_written_in_place(tmp_path):
    """`--log pipe` with `mkfifo pipe; cat pipe` (or /dev/null, /dev/stdout as root): the temporary file
    was renamed over it, so the pipe became a regular file and its reader got nothing (/dev/null
    became a file for every process). A device or pipe is now written in place and stays what it was."""
    pipe = tmp_path / "faces.pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader waiting, as `cat pipe` would
    try:
        assert fileio.unwritable(pipe) is None
        fileio.write_text(pipe, '{"frame": 0}\n')
        assert os.read(reader, 100) == b'{"frame": 0}\n'
    finally:
        os.close(reader)
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["faces.pipe"]


def test_a_file_descriptor_is_written_through_not_replaced(tmp_path):
    """`--log /dev/stdout > faces.jsonl` as root: /dev/stdout (a link to /proc/self/fd/1) was replaced by a
    regular file, for every process after. A name of an open descriptor is now written through."""
    captured = tmp_path / "faces.jsonl"
    fd = os.open(captured, os.O_WRONLY | os.O_CREAT)
    try:
        stdout = tmp_path / "stdout"  # as /dev/stdout, in a folder the test may write
        stdout.symlink_to(f"/proc/self/fd/{fd}")
        fileio.write_text(stdout, '{"frame": 0}\n')
        assert stdout.is_symlink() and captured.read_text() == '{"frame": 0}\n'
        fileio.write_text(tmp_path / "fd", "x")  # a file of its own is written whole, as before
    finally:
        os.close(fd)


def test_a_lock_holder_shown_as_pid_0_is_not_named(tmp_path):
    """Kernels before about 4.18 list a flock held from another PID namespace as PID 0 in
    /proc/locks; naming it would tell the user to `kill 0`, which signals their own process group."""
    st = os.stat(tmp_path)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    assert fileio.lock_holder(tmp_path, f"1: FLOCK  ADVISORY  WRITE 0 {where} 0 EOF\n") is None
    me = fileio.lock_holder(tmp_path, f"1: FLOCK  ADVISORY  WRITE {os.getpid()} {where} 0 EOF\n")
    assert me is not None and me[0] == os.getpid() and "pytest" in me[1]

"""Frame sources: each video frame at its own time, on real OpenCV videos; and what a user may
name as --source (a broken video, a folder of folders, a pipe, a device, a symlink loop)."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from emovision.errors import SourceError
from emovision.images import decode_image, read_image
from emovision.predict import main as predict_main
from emovision.sources import ASSUMED_FPS, frame_rate, frame_time, open_source
from emovision.webcam import main as webcam_main
from tests.conftest import REPO
from tests.media import grace_hopper

CONTAINERS = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts")  # ISO media boxes that hold boxes


def _parse(data: bytes) -> list:
    boxes, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + size]
        boxes.append([kind, _parse(body) if kind in CONTAINERS else bytearray(body)])
        pos += size
    return boxes


def _serialize(boxes: list) -> bytes:
    out = b""
    for kind, body in boxes:
        body = _serialize(body) if isinstance(body, list) else bytes(body)
        out += struct.pack(">I4s", 8 + len(body), kind) + body
    return out


def _box(boxes: list, *path: bytes) -> bytearray | list:
    for kind, body in boxes:
        if kind == path[0]:
            return body if len(path) == 1 else _box(body, *path[1:])
    raise KeyError(path[0])


def variable_rate_video(path: Path, durations_s: list[float], size: tuple[int, int] = (320, 240)) -> list[float]:
    """A real mp4v video (cv2.VideoWriter) whose frame i lasts durations_s[i], as a phone records
    (OpenCV writes a constant rate: its sample-duration table, `stts`, is rewritten, and the
    durations of the track, movie and edit list with it; the file has one track, version-0
    boxes and its index after the frames, so no frame moves). Returns the frames' times."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    photo = cv2.resize(grace_hopper(), (size[1] * 512 // 600, size[1]))
    for i in range(len(durations_s)):
        frame = np.full((size[1], size[0], 3), 100, np.uint8)
        x = 4 * i % (size[0] - photo.shape[1])
        frame[:, x:x + photo.shape[1]] = photo
        writer.write(frame)
    writer.release()
    boxes = _parse(path.read_bytes())
    movie_scale = struct.unpack(">I", _box(boxes, b"moov", b"mvhd")[12:16])[0]
    mdhd = _box(boxes, b"moov", b"trak", b"mdia", b"mdhd")
    media_scale = struct.unpack(">I", mdhd[12:16])[0]
    ticks = [round(d * media_scale) for d in durations_s]
    total, movie_total = sum(ticks), round(sum(ticks) * movie_scale / media_scale)
    mdhd[16:20] = struct.pack(">I", total)
    _box(boxes, b"moov", b"mvhd")[16:20] = struct.pack(">I", movie_total)
    _box(boxes, b"moov", b"trak", b"tkhd")[20:24] = struct.pack(">I", movie_total)
    _box(boxes, b"moov", b"trak", b"edts", b"elst")[8:12] = struct.pack(">I", movie_total)
    runs: list[list[int]] = []
    for t in ticks:
        if runs and runs[-1][1] == t:
            runs[-1][0] += 1
        else:
            runs.append([1, t])
    for entry in _box(boxes, b"moov", b"trak", b"mdia", b"minf", b"stbl"):
        if entry[0] == b"stts":
            entry[1] = bytearray(struct.pack(">II", 0, len(runs)) + b"".join(struct.pack(">II", *r) for r in runs))
    path.write_bytes(_serialize(boxes))
    return [sum(ticks[:i]) / media_scale for i in range(len(ticks))]


def test_a_variable_frame_rate_video_is_logged_at_its_own_times(tmp_path):
    """The log's `time` was frame / fps: on 10 frames at 30 fps then 10 at 10 fps (15 fps on
    average, as OpenCV reports it) frame 10 was at 0.67 s for 0.33 recorded, frame 19 at 1.27 for
    1.23. It is each frame's own timestamp now (CAP_PROP_POS_MSEC)."""
    video = tmp_path / "phone.mp4"
    truth = variable_rate_video(video, [1 / 30] * 10 + [1 / 10] * 10)
    with open_source(str(video)) as source:
        assert source.fps == pytest.approx(15, abs=0.5)  # frame / fps would be off by up to 0.33 s
        stamps = [stamp for _, stamp, _ in source]
    assert stamps == pytest.approx(truth, abs=1e-3)
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(video), "--log", str(log),
                        "--detector", "haar"]) == 0
    assert [json.loads(line)["time"] for line in log.read_text().splitlines()] == pytest.approx(truth, abs=1e-3)


@pytest.mark.parametrize("fps", [10, 25, 30])
def test_a_constant_rate_video_keeps_frame_over_fps(tmp_path, fps):
    """The backend's timestamps are used where they are sane: on a constant-rate video they are
    frame / fps, as before."""
    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    with open_source(str(video)) as source:
        assert [stamp for _, stamp, _ in source] == pytest.approx([i / fps for i in range(12)], abs=1e-6)


def test_a_source_rate_is_taken_where_sane_and_30_fps_otherwise():
    """One rule for a source's frame rate (`frame_rate`), which the frames' times, the tracker's id
    lifetime and the --output video all take: a stream may say 0, nan or 90,000 (its clock)."""
    assert [frame_rate(r) for r in (25, 29.97, 240, 1.5)] == [25, 29.97, 240, 1.5]
    assert {frame_rate(r) for r in (None, 0, 1, -30, 0.5, 241, 1000, 90000, math.nan, math.inf)} == {ASSUMED_FPS}


def test_a_video_whose_header_says_90000_fps_is_taken_at_30_and_written(tmp_path):
    """A real video whose header says 90,000 fps (a stream's clock rate as its rate; the frames
    1/90000 s apart): the source kept 90,000 for its rate and the tracker took 30, and `--output`
    asked OpenCV's writer for 90,000, which it refuses, so the run ended in `cannot write video
    ...: check the folder and the .mp4 extension`, exit 2. Now all take 30 fps: the run completes
    and the annotated video plays at 30 fps."""
    video, out, log = tmp_path / "clock.mp4", tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    frames = 12
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (160, 120))
    for i in range(frames):
        writer.write(np.full((120, 160, 3), 20 * i, np.uint8))
    writer.release()
    boxes = _parse(video.read_bytes())
    mdhd = _box(boxes, b"moov", b"trak", b"mdia", b"mdhd")
    mdhd[12:20] = struct.pack(">II", 90000, frames)  # time scale 90 kHz, one tick a frame
    for entry in _box(boxes, b"moov", b"trak", b"mdia", b"minf", b"stbl"):
        if entry[0] == b"stts":
            entry[1] = bytearray(struct.pack(">IIII", 0, 1, frames, 1))
    video.write_bytes(_serialize(boxes))
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == 90000  # what OpenCV reports
    capture.release()
    with open_source(str(video)) as source:
        assert source.fps == ASSUMED_FPS
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(video), "--output", str(out),
                        "--log", str(log), "--detector", "haar"]) == 0
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(ASSUMED_FPS)
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == frames
    capture.release()


@pytest.mark.parametrize("reported_ms, expected_s", [
    ([0, 40, 80], [0, 0.04, 0.08]),  # sane: the backend's own
    ([0, 0, 0], [0, 0.04, 0.08]),  # a backend without timestamps
    ([math.nan, math.inf, -5.0], [0, 0.04, 0.08]),  # not finite, negative
    ([0, 40, 30, 120], [0, 0.04, 0.08, 0.12]),  # going back: one period on, then the backend's again
    ([-40, 0, 40], [0, 0.04, 0.08]),  # a negative start is not before 0
])
def test_a_broken_timestamp_falls_back_to_one_frame_period(reported_ms, expected_s):
    stamps, previous = [], None
    for ms in reported_ms:
        previous = frame_time(ms, previous, fps=25.0)
        stamps.append(previous)
    assert stamps == pytest.approx(expected_s)


def _clip(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_a_video_that_cannot_be_read_is_one_line_and_ffmpeg_says_nothing(tmp_path):
    """FFmpeg printed its own 'moov atom not found' above our line for a cut-off MP4 or a text
    file named .mp4 (OpenCV's log level does not reach FFmpeg's): two lines. Each of these is
    now one line, exit 2, before the model loads. In a fresh process: FFmpeg's level is set once."""
    whole = _clip(tmp_path / "whole.mp4", 10).read_bytes()
    cases = {"cut.mp4": whole[:len(whole) // 2], "notes.mp4": b"this is not a video\n",
             "empty.mp4": _clip(tmp_path / "e.mp4", 0).read_bytes(),
             "sound.mp4": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64)}  # a WAV (audio only) named .mp4
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        run = subprocess.run([sys.executable, "-m", "emovision.webcam", "--model", "nope.pt", "--no-display",
                              "--source", str(tmp_path / name)], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, (name, run.stderr)
        assert run.stderr.startswith(f"error: cannot ") and str(tmp_path / name) in run.stderr, run.stderr


def test_a_folder_is_read_with_its_subfolders(tmp_path):
    """Photos in subfolders (photos/2024/..., a camera's DCIM/100CANON) were passed over: a folder
    of folders was 'no images in folder'. They are read, sorted by path; hidden folders are not
    (.thumbnails, .git), nor links to folders (a link to its parent looped)."""
    jpeg = cv2.imencode(".jpg", grace_hopper())[1].tobytes()
    for name in ("DCIM/100CANON/IMG_1.JPG", "DCIM/101CANON/IMG_2.JPG", ".thumbnails/t.jpg"):
        (tmp_path / "card" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "card" / name).write_bytes(jpeg)
    (tmp_path / "card" / "DCIM" / "loop").symlink_to("..")
    with open_source(str(tmp_path / "card")) as source:
        assert [p.relative_to(tmp_path / "card").as_posix() for p in source.files] == [
            "DCIM/100CANON/IMG_1.JPG", "DCIM/101CANON/IMG_2.JPG"]
        assert len(list(source)) == 2
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images in folder .* or its subfolders"):
        open_source(str(tmp_path / "empty"))


def test_a_gif_in_a_folder_is_a_still(tmp_path):
    """A folder's GIFs were passed over without a word (a folder of GIFs: 'no images in folder'),
    as GIF was left to the video reader. Each is now a still, its first frame, as predict reads it."""
    from PIL import Image

    hopper = Image.fromarray(cv2.cvtColor(grace_hopper(), cv2.COLOR_BGR2RGB))
    hopper.save(tmp_path / "a.gif", save_all=True, append_images=[Image.new("RGB", hopper.size)] * 2)
    cv2.imwrite(str(tmp_path / "b.jpg"), grace_hopper())
    with open_source(str(tmp_path)) as source:
        assert [p.name for p in source.files] == ["a.gif", "b.jpg"]
        frames = [frame for _, _, frame in source]
    assert len(frames) == 2 and not source.skipped
    np.testing.assert_array_equal(frames[0], read_image(tmp_path / "a.gif"))
    assert frames[0].mean() > 50  # the photo, not the black frames after it


def _feed(fifo: Path, data: bytes) -> threading.Thread:
    """Write `data` into a FIFO from another thread, as a shell's <(cat FILE) does."""
    def write():
        try:
            with open(fifo, "wb") as f:
                f.write(data)
        except BrokenPipeError:  # the reader stopped early: what it does for a video
            pass
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_piped_image_is_read_and_a_piped_video_is_one_line(tmp_path, monkeypatch, capsys):
    """`--source -` and a FIFO (bash's <(curl -s URL)) were 'source not found', and `predict -`
    'unreadable image file (No such file or directory)'. A piped image is read whole, as predict
    reads a FIFO; a piped video is refused in one line, after its first bytes only."""
    photo = cv2.imencode(".jpg", grace_hopper())[1].tobytes()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    feeder = _feed(fifo, photo)
    with open_source(str(fifo)) as source:
        ((_, _, frame),) = list(source)
    np.testing.assert_array_equal(frame, decode_image(photo))
    feeder.join(10)
    feeder = _feed(fifo, _clip(tmp_path / "clip.mp4", 10).read_bytes())
    with pytest.raises(SourceError, match=f"cannot read {fifo}: a pipe, which the app reads only for an image"):
        open_source(str(fifo))
    feeder.join(10)
    log = tmp_path / "faces.jsonl"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(photo)))
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", "-", "--log", str(log)]) == 0
    assert [len(json.loads(line)["faces"]) for line in log.read_text().splitlines()] == [1]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(photo)))
    capsys.readouterr()
    assert predict_main(["--model", "pretrained", "-"]) == 0
    assert [json.loads(line)["image"] for line in capsys.readouterr().out.splitlines()] == ["-"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # cron's or nohup's /dev/null
    with pytest.raises(SourceError, match="cannot read -: nothing came through the pipe"):
        open_source("-")


def test_a_piped_gif_is_a_still_as_predict_reads_it(tmp_path):
    """A GIF piped in was refused as 'a pipe, which the app reads only for an image; save a video
    to a file', though predict reads it and the app reads a GIF file or one in a folder."""
    from PIL import Image

    gif = tmp_path / "photo.gif"
    Image.fromarray(grace_hopper()[::2, ::2, ::-1]).convert("P").save(gif)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    feeder = _feed(fifo, gif.read_bytes())
    with open_source(str(fifo)) as source:
        ((_, _, frame),) = list(source)
    feeder.join(10)
    np.testing.assert_array_equal(frame, read_image(gif))


def test_a_file_redirected_into_standard_input_is_read_as_that_file(tmp_path, monkeypatch):
    """`--source - < clip.mp4` was refused as 'a pipe, which the app reads only for an image; save a
    video to a file': standard input was that file, which OpenCV reads by its name, /dev/fd/N."""
    with io.TextIOWrapper(_clip(tmp_path / "clip.mp4", 10).open("rb")) as redirected:  # the shell's `< clip.mp4`
        monkeypatch.setattr(sys, "stdin", redirected)
        with open_source("-") as source:
            frames = [frame for _, _, frame in source]
    assert len(frames) == 10 and frames[9].mean() > frames[0].mean() + 100  # every frame, in order


def test_standard_input_closed_or_a_terminal_is_one_line(monkeypatch, capsys):
    """`predict -` and `--source -` with standard input closed (`<&-`: Python's sys.stdin is None)
    ended in an AttributeError traceback; `predict -` at a terminal waited silently for typed bytes."""
    import pty

    leader, follower = pty.openpty()  # a real terminal, as an interactive shell's stdin
    terminal = os.fdopen(follower, "r")
    os.write(leader, b"\x04")  # Ctrl-D typed ahead: a read that waits on the terminal ends (empty), not hangs
    try:
        for stdin, why in ((None, "standard input is closed"), (terminal, "standard input is the terminal")):
            monkeypatch.setattr(sys, "stdin", stdin)
            with pytest.raises(SourceError, match=f"--source -: nothing is piped in \\({why}\\)"):
                open_source("-")
            capsys.readouterr()
            assert predict_main(["--model", "pretrained", "-"]) == 2
            assert capsys.readouterr().err == f"error: cannot read image -: nothing is piped in ({why})\n"
    finally:
        terminal.close()
        os.close(leader)


def test_a_stream_that_cannot_be_opened_says_how_to_see_ffmpegs_reason():
    """FFmpeg's own messages are silenced (OPENCV_FFMPEG_LOGLEVEL=8), and with them the only reason
    a stream fails ('HTTP error 401 Unauthorized', 'Connection refused'), which it printed before:
    the one line says how to see it."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SourceError, match=f"cannot open stream rtsp://127.0.0.1:{port}/cam: check the URL and that "
                       f"the stream is reachable \\(OPENCV_FFMPEG_LOGLEVEL=24 in the environment shows FFmpeg's"):
        open_source(f"rtsp://127.0.0.1:{port}/cam")


def test_a_url_of_one_image_is_refused_in_one_line(tmp_path, capsys):
    """`--source http://HOST/photo.jpg`: FFmpeg opens an image URL as a stream of one frame, which
    the open check read and dropped, so the app processed 0 frames and exited 0 without a word.
    A stream of one frame is now refused, pointing at the pipe that reads a photo from a URL."""
    import functools
    import http.server

    cv2.imwrite(str(tmp_path / "photo.jpg"), grace_hopper())
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
            log = tmp_path / "faces.jsonl"
            assert webcam_main(["--model", "nope.pt", "--no-display", "--source", url, "--log", str(log)]) == 2
        finally:
            server.shutdown()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"error: stream {url} holds a single image, not a video: for a photo, --source <(curl -s URL)" in err
    assert not log.exists()


def test_a_stream_that_stops_sending_keeps_the_frames_processed(tmp_path, monkeypatch, capsys):
    """A camera or stream that stopped sending mid-run (unplugged, Wi-Fi lost) ended in 'error: ...:
    no frame for 5s', exit 2, and --output and --log of every frame processed were deleted: a long
    session lost for a dropped connection. Now it ends the run as a video's end does, its outputs
    kept, with one warning line and exit 1. Here a real MJPEG-over-HTTP camera on 127.0.0.1 that
    sends 12 frames, then nothing."""
    import http.server

    import emovision.sources as sources
    from tests.media import model_ref

    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[20:220, 80:240] = cv2.resize(grace_hopper(), (160, 200))
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    stalled = threading.Event()

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(12):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                 + jpeg + b"\r\n")
                self.wfile.flush()
            stalled.wait(30)  # connected, silent

    monkeypatch.setattr(sources, "LIVE_READ_TIMEOUT_S", 1.0)
    out, log = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
        try:
            code = webcam_main(["--model", model_ref(tmp_path), "--backend", "torch", "--no-display", "--source", url,
                                "--output", str(out), "--log", str(log)])
        finally:
            stalled.set()
            server.shutdown()
    err = capsys.readouterr().err
    assert code == 1, err
    frames = len(log.read_text().splitlines())
    assert frames >= 1 and cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == frames
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"warning: stream {url} sent no frame for 1 s: the run ended after {frames} frames; "
                          "the outputs cover them"), err


def test_a_camera_that_stops_giving_frames_is_said_and_a_stream_that_ends_is_not(tmp_path):
    """A camera whose read fails (unplugged, taken by another program) ended the run like a finished
    video: exit 0, not a word, so a headless recording that died looked complete. A camera's read
    only fails when it is gone; a stream may simply end. The frames of a real video file, read as
    a camera and as a stream."""
    from emovision.sources import LiveSource
    from emovision.webcam import make_benchmark_video

    video = make_benchmark_video(tmp_path / "v.mp4", frames=5)
    for camera in (True, False):
        with LiveSource(cv2.VideoCapture(str(video)), "camera 0" if camera else "stream x", camera=camera) as source:
            frames = list(source)
        assert frames and source.stalled == ("camera 0 stopped giving frames (unplugged, or taken by another "
                                             "program)" if camera else None)


def test_what_is_not_a_file_is_named_in_one_line(tmp_path):
    """A symlink loop and a dangling link were 'source not found'; so were -1 and a camera's device
    file (with a camera too: /dev/video0 is no regular file). Each now says what it is."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "moved.mp4")
    cases = [(str(tmp_path / "a"), f"cannot read {tmp_path / 'a'}: Too many levels of symbolic links"),
             (str(tmp_path / "gone.mp4"), f"cannot read {tmp_path / 'gone.mp4'}: a symbolic link to "
                                          f"{tmp_path / 'moved.mp4'}, which does not exist"),
             ("-1", "no camera -1: camera indexes start at 0"),
             ("/dev/video99", "cannot open camera /dev/video99: no such device or it is busy"),
             ("/dev/null", "cannot open camera /dev/null: no such device or it is busy"),  # a device, not a camera
             (str(tmp_path / "missing.mp4"), f"source not found: {tmp_path / 'missing.mp4'}")]
    for spec, message in cases:
        with pytest.raises(SourceError) as err:
            open_source(spec)
        assert str(err.value).startswith(message), (spec, str(err.value))


def _as_nobody(call) -> str:
    """What `call()` returns when run by a user other than root, for whom permissions do not stop
    a read: in a child forked and dropped to nobody where the tests run as root."""
    if os.geteuid() != 0:
        return call()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, call().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return f.read()


def _opening(spec: str) -> str:
    try:
        open_source(spec).close()
        return "opened"
    except SourceError as err:
        return f"SourceError: {err}"
    except Exception as err:  # noqa: BLE001 - what escapes is the finding
        return f"{type(err).__name__}: {err}"


@pytest.fixture
def open_tmp():
    """A temporary folder others may enter (pytest's tmp_path lies in a folder only its owner may)."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o755)
    shutil.rmtree(folder)


def test_a_folder_that_cannot_be_listed_is_one_line(open_tmp):
    """A folder without read permission raised PermissionError from its listing: a traceback.
    A photo without it was already named (`unreadable image file (Permission denied)`)."""
    folder = open_tmp / "locked"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), grace_hopper())
    folder.chmod(0)
    assert _as_nobody(lambda: _opening(str(folder))) == f"SourceError: cannot list folder {folder}: Permission denied"
    folder.chmod(0o755)
    (folder / "a.jpg").chmod(0)
    assert _as_nobody(lambda: _opening(str(folder / "a.jpg"))) == (
        f"SourceError: cannot read image {folder / 'a.jpg'}: unreadable image file (Permission denied)")


def test_a_phone_video_is_read_upright(tmp_path):
    """A phone stores a portrait video landscape, with a display matrix saying to turn it 90
    degrees (tkhd). OpenCV's FFmpeg backend turns the frames (CAP_PROP_ORIENTATION_AUTO), so faces
    are found upright and their boxes are in the frame the user sees: this holds it to that."""
    upright = np.full((320, 240, 3), 100, np.uint8)
    upright[40:274, 20:220] = cv2.resize(grace_hopper(), (200, 234))
    video = tmp_path / "phone.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(3):
        writer.write(cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE))  # as the sensor recorded it
    writer.release()
    boxes = _parse(video.read_bytes())
    one, minus_one = 0x00010000, 0xFFFF0000  # 16.16 fixed point
    _box(boxes, b"moov", b"trak", b"tkhd")[40:76] = struct.pack(">9I", 0, one, 0, minus_one, 0, 0, 240 << 16, 0,
                                                                 0x40000000)  # turn 90 degrees clockwise
    video.write_bytes(_serialize(boxes))
    with open_source(str(video)) as source:
        assert source.frame_size == (240, 320)
        frames = [frame for _, _, frame in source]
    assert len(frames) == 3 and np.abs(frames[0].astype(int) - upright).mean() < 10

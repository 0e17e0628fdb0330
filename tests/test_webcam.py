"""The webcam and predict apps, headless on videos built from real photos."""
from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from emovision.device import usable_cpus
from emovision.faces import iou_matrix
from emovision.predict import main as predict_main
from emovision.webcam import AtomicVideoWriter, atomic_text, make_benchmark_video
from emovision.webcam import main as webcam_main
from tests.conftest import REPO
from tests.media import (ASTRONAUT_FACE, FACE_SCENES, HOPPER_FACE, astronaut, blank, cameraman_box, face_frame,
                         grace_hopper, make_video, model_ref)

DETECT_EVERY = 2
SETTLE = DETECT_EVERY * 2  # frames after a scene change before the display must agree with it


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "faces.mp4", frames_per_scene=20)


@pytest.fixture
def checkpoint(tmp_path):
    return model_ref(tmp_path)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_error_line(err: str, message: str) -> None:
    assert "Traceback" not in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_headless_run_on_video(in_trained, video, tmp_path, capsys):
    out, log = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    code = webcam_main(["--model", "models:/fer/Production", "--source", str(video.path), "--no-display",
                        "--output", str(out), "--log", str(log), "--device", "cpu",
                        "--detect-every", str(DETECT_EVERY)])
    assert code == 0
    records = read_log(log)
    assert [r["frame"] for r in records] == list(range(len(video.boxes)))
    settled = [i for i in range(len(records)) if i % 20 >= SETTLE]  # 20 frames per scene
    face_frames = [i for i in settled if video.has_face[i]]
    empty_frames = [i for i in settled if not video.has_face[i]]
    found = [i for i in face_frames if len(records[i]["faces"]) == len(video.boxes[i])]
    assert len(found) >= 0.9 * len(face_frames)
    for i in empty_frames:  # no face; in camera.png, at most the cameraman's turned face
        boxes = np.array([f["box"] for f in records[i]["faces"]]).reshape(-1, 4)
        if video.segment[i] != "camera" or len(boxes) > 1:
            assert len(boxes) == 0, i
        elif len(boxes):
            assert iou_matrix(boxes, np.array([cameraman_box()]))[0, 0] > 0.3, i
    for i in found:  # each box belongs to this frame (faces move up to 11 px a frame): no queueing
        boxes = np.array([f["box"] for f in records[i]["faces"]])
        assert iou_matrix(np.array(video.boxes[i]), boxes).max(1).min() > 0.5, i
    for scene in FACE_SCENES:  # one stable id per face while it moves and grows
        ids = {f["track_id"] for i in face_frames if video.segment[i] == scene for f in records[i]["faces"]}
        assert len(ids) == (2 if scene == "two" else 1), (scene, ids)
    face = records[found[0]]["faces"][0]
    assert set(face) == {"track_id", "box", "detected", "label", "probs"} and len(face["box"]) == 4
    flags = [f["detected"] for r in records for f in r["faces"]]
    assert True in flags and False in flags  # found on detection frames, carried between them
    assert face["label"] == max(face["probs"], key=face["probs"].get)
    assert abs(sum(face["probs"].values()) - 1) < 1e-3 and records[1]["time"] == pytest.approx(1 / 30, abs=1e-3)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(video.boxes)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30)
    cap.release()
    assert not list(tmp_path.glob(".*partial*"))  # temporary names renamed away
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"{len(video.boxes)} frames") and "fps processing" in summary


def test_checkpoint_model_on_image_folder(checkpoint, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), grace_hopper())
    log = tmp_path / "log.jsonl"
    assert webcam_main(["--model", checkpoint, "--source", str(folder), "--no-display", "--device", "cpu",
                        "--log", str(log), "--max-frames", "2"]) == 0
    records = read_log(log)  # stills: a face in the very first image, no confirmation delay
    assert len(records) == 2 and all(len(r["faces"]) == 1 for r in records)
    assert "independent stills" in capsys.readouterr().out


def test_stills_are_independent(checkpoint, tmp_path):
    """A face photo, then a blank image: nothing of the face is carried onto the blank."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img in (("0.jpg", grace_hopper()), ("1.png", blank()), ("2.jpg", grace_hopper()), ("3.png", blank())):
        cv2.imwrite(str(folder / name), img)
    log = tmp_path / "log.jsonl"
    assert webcam_main(["--model", checkpoint, "--source", str(folder), "--no-display", "--log", str(log)]) == 0
    records = read_log(log)
    assert [len(r["faces"]) for r in records] == [1, 0, 1, 0]
    assert records[0]["faces"][0]["track_id"] is None and records[0]["faces"][0]["detected"] is True


def test_output_of_a_folder_of_mixed_sizes_has_every_image(checkpoint, tmp_path):
    """Photos of different sizes (and a grayscale PNG) into one --output video: every image is
    a frame, scaled to fit the first one's size. cv2.VideoWriter silently dropped the 3 of 4
    frames of another size (an FFmpeg warning each, exit 0)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    small = cv2.resize(astronaut(), (200, 150), interpolation=cv2.INTER_AREA)
    for name, img in (("0.jpg", grace_hopper()), ("1.png", blank()), ("2.png", cv2.cvtColor(astronaut(), cv2.COLOR_BGR2GRAY)),
                      ("3.png", small)):
        cv2.imwrite(str(folder / name), img)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    assert webcam_main(["--model", checkpoint, "--source", str(folder), "--no-display", "--output", str(out),
                        "--log", str(log)]) == 0
    assert [len(r["faces"]) for r in read_log(log)][:3] == [1, 0, 1]
    cap, frames = cv2.VideoCapture(str(out)), []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame)
    cap.release()
    assert len(frames) == 4 and all(f.shape == (600, 512, 3) for f in frames)
    assert abs(int(frames[1][300, 256, 0]) - 128) < 8  # the blank 640x480, scaled into the middle
    assert frames[1][20, 256].max() < 8  # ... with black above and below it


def small_frame_video(path, seed: int, frames: int = 24, size: tuple[int, int] = (320, 240)) -> list[tuple]:
    """grace_hopper with a 60-80 px face drifting slowly in a 320x240 frame (a low-resolution
    webcam) on a flat grey, seeded; returns the face box [x, y, w, h] of every frame."""
    rng = np.random.default_rng(seed)
    (w, h), side = size, int(rng.integers(60, 80))
    scale = side / HOPPER_FACE[2]
    photo = cv2.resize(grace_hopper(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    background = int(rng.integers(40, 200))
    x, y = float(rng.integers(100, 150)), float(rng.integers(60, 100))
    vx, vy = rng.uniform(-2, 2, 2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    boxes = []
    for _ in range(frames):
        frame = np.full((h, w, 3), background, np.uint8)
        px, py = int(x - HOPPER_FACE[0] * scale), int(y - HOPPER_FACE[1] * scale)
        x0, y0 = max(0, px), max(0, py)
        part = photo[y0 - py:y0 - py + h - y0, x0 - px:x0 - px + w - x0]
        frame[y0:y0 + part.shape[0], x0:x0 + part.shape[1]] = part
        writer.write(frame)
        boxes.append((int(x), int(y), side, side))
        x, y = x + vx, y + vy
    writer.release()
    return boxes


@pytest.mark.parametrize("seed", [0, 3])
def test_probability_panel_covers_no_face_in_a_320x240_video(checkpoint, tmp_path, seed):
    """In a 320x240 frame the full panel (206x140) fits nowhere beside a face in the middle: it
    is drawn smaller where that fits and left out otherwise, never over the face. The middle of
    the face keeps its brightness in the --output video (output / input: 0.98 on seeds 0-5;
    before, the panel darkened it to 0.43-0.69 on 6 to 22 of the 22 frames with a face)."""
    video, out, log = tmp_path / "in.mp4", tmp_path / "out.mp4", tmp_path / "log.jsonl"
    boxes = small_frame_video(video, seed)
    assert webcam_main(["--model", checkpoint, "--source", str(video), "--no-display", "--output", str(out),
                        "--log", str(log), "--device", "cpu"]) == 0
    assert sum(len(r["faces"]) == 1 for r in read_log(log)) >= 20  # the face is found: the panel is drawn
    source, annotated = cv2.VideoCapture(str(video)), cv2.VideoCapture(str(out))
    for i, (x, y, w, h) in enumerate(boxes):
        q = w // 4  # the middle half of the face: clear of the box's lines and the label strip
        before, after = (cap.read()[1][y + q:y + h - q, x + q:x + w - q].astype(float).mean()
                         for cap in (source, annotated))
        assert after / before > 0.9, (i, after / before)
    source.release()
    annotated.release()


@pytest.fixture
def still(tmp_path):
    """A readable image source, so that the error under test is the first one met."""
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), blank())
    return str(path)


def test_a_folder_log_names_each_image_relative_to_the_folder(checkpoint, tmp_path, video):
    """A folder's log said only the frame index, which no longer maps to a file once subfolders
    are read: each record of a still source now names its image, relative to the folder given
    (the file's name for a single image); a video's records are as before."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    face = cv2.resize(grace_hopper(), (160, 200), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "b.png"), face)
    cv2.imwrite(str(folder / "sub" / "a.png"), face)
    names = {}
    for source in (folder, folder / "sub" / "a.png", video.path):
        log = tmp_path / "log.jsonl"
        assert webcam_main(["--model", checkpoint, "--source", str(source), "--no-display", "--log", str(log),
                            "--max-frames", "4"]) == 0
        names[source] = [json.loads(line).get("image") for line in log.read_text().splitlines()]
    assert sorted(map(str, names[folder])) == ["b.png", "sub/a.png"]
    assert names[folder / "sub" / "a.png"] == ["a.png"] and names[video.path] == [None] * 4


def test_broken_images_in_a_folder_are_skipped_and_named(checkpoint, tmp_path, capsys):
    """A cut-off JPEG used to be classified with its missing rows grey (imread guesses), and an
    unreadable file stopped the run with nothing written: now both are skipped, the others
    processed and written, and the run ends with one warning naming them and exit 1."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    whole = cv2.imencode(".jpg", grace_hopper())[1].tobytes()
    (folder / "0.jpg").write_bytes(whole)
    (folder / "1.jpg").write_bytes(whole[:len(whole) // 2])  # a half-copied photo
    (folder / "2.png").write_bytes(b"not an image")
    (folder / "3.jpg").write_bytes(whole)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    assert webcam_main(["--model", checkpoint, "--source", str(folder), "--no-display",
                        "--output", str(out), "--log", str(log)]) == 1
    err = capsys.readouterr().err
    one_error_line(err, f"warning: 2 of 4 images could not be used and were skipped: {folder / '1.jpg'} "
                        f"(truncated JPEG (no end-of-image marker after the image data)); {folder / '2.png'} "
                        f"(unreadable image file)")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 3] and all(len(r["faces"]) == 1 for r in records)
    assert out.stat().st_size > 0 and not list(tmp_path.glob(".*partial*"))
    assert predict_main(["--model", checkpoint, str(folder / "0.jpg"), str(folder / "1.jpg")]) == 2
    one_error_line(capsys.readouterr().err, f"cannot read image {folder / '1.jpg'}: truncated JPEG")


def test_a_crash_mid_run_leaves_no_half_written_outputs(tmp_path):
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    writer = AtomicVideoWriter(out, 30.0, (64, 48))
    with pytest.raises(RuntimeError, match="camera unplugged"):
        with atomic_text(log) as f:  # as `run` holds them: the log in a block, the video closed after
            f.write("{}\n")
            writer.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("camera unplugged")
    writer.close(ok=False)
    assert not out.exists() and not log.exists() and not list(tmp_path.glob(".*partial*"))



@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_keeps_the_frames_recorded_so_far(checkpoint, tmp_path, stop):
    """Ctrl-C is how a headless run (a camera with --no-display) stops: it threw away the whole
    --output video and --log. Now the loop ends after the frame at hand and both are whole
    files of the frames processed; one line says so, exit 130. `kill` (SIGTERM: `timeout 60
    python -m emovision.webcam ...` sends it) ended the run on the spot and lost both: it is Ctrl-C now."""
    video = make_benchmark_video(tmp_path / "long.mp4", frames=600)
    out, log = tmp_path / "out" / "rec.mp4", tmp_path / "out" / "faces.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "emovision.webcam", "--model", checkpoint, "--source", str(video),
                             "--no-display", "--output", str(out), "--log", str(log), "--threads", "1"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.parent.glob(".rec.mp4.*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the video is opened at the first frame processed
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    records = read_log(log)
    frames = len(records)
    one_error_line(err, f"interrupted after {frames} frames; {out} and {log} hold them")
    assert proc.returncode == 130 and 0 < frames < 600
    assert [r["frame"] for r in records] == list(range(frames))
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    cap.release()
    assert not list(out.parent.glob(".*partial*"))


def test_a_full_disk_keeps_the_earlier_video_and_says_so_in_one_line(checkpoint, tmp_path):
    """OpenCV's video writer reports no error: on a full disk it wrote a file without its index
    (unplayable: "moov atom not found"), renamed it over the user's earlier out.mp4 and exited
    0, after a warning line per frame. Now the video is read back before the rename: one line,
    exit 2, the earlier video kept."""
    from tests.full_disk import run_on_full_disk

    earlier = make_benchmark_video(tmp_path / "earlier.mp4", frames=5)
    source = make_benchmark_video(tmp_path / "source.mp4", frames=40)  # about 200 kB annotated
    disk = tmp_path / "disk"
    out = disk / "out.mp4"
    rc, err = run_on_full_disk(disk, {"out.mp4": earlier},
                               [sys.executable, "-m", "emovision.webcam", "--model", checkpoint, "--source",
                                str(source), "--no-display", "--output", str(out), "--threads", "1"],
                               free=64 * 1024, env={**os.environ, "PYTHONPATH": str(REPO)})
    one_error_line(err, f"error: cannot write {out}: no space left on the disk; free some space and run again "
                        f"({out} is as it was)")
    assert rc == 2
    after = disk.with_name("disk.after")
    assert [p.name for p in after.iterdir()] == ["out.mp4"]  # no partial left behind
    assert (after / "out.mp4").read_bytes() == earlier.read_bytes()


def test_predict_into_a_full_disk_is_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    """`predict ... > faces.jsonl` on a full disk ended in a traceback from print(); /dev/full
    is such a disk."""
    photo = tmp_path / "hopper.jpg"
    cv2.imwrite(str(photo), grace_hopper())
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert predict_main(["--model", checkpoint, str(photo)]) == 2
    one_error_line(capsys.readouterr().err, "error: no space left on the disk; free some space and run again")


@pytest.mark.parametrize("args, message", [
    (["--source", "7"], "cannot open camera 7: no such device"),
    (["--source", "missing.mp4"], "source not found: missing.mp4"),
    (["--smooth", "1.5"], "--smooth must be in [0, 1)"),
    # below the detector's window every frame was enlarged: --min-face 1 took 48 s and 5.9 GB a frame
    (["--min-face", "5"], "--min-face must be >= 12 px with --detector mtcnn (its smallest window"),
    (["--detector", "haar", "--min-face", "19"], "--min-face must be >= 20 px with --detector haar"),
    # 100,000 threads ran out of memory in torch, reported as damaged weights
    (["--threads", "100000"], f"--threads must be 1..{usable_cpus()} (the CPUs this process may use), got 100000"),
    (["--detector", "haar", "--cascade", "nope.xml"], "cascade file not found: nope.xml"),
    (["--cascade", "x.xml"], "--cascade is for the haar detector, not mtcnn"),
    (["--model", "nope.pt"], "model 'nope.pt' not found"),
])
def test_bad_input_is_one_line(checkpoint, still, args, message, capsys):
    source = [] if "--source" in args else ["--source", still]
    assert webcam_main(["--model", checkpoint, "--no-display", *source, *args]) == 2
    one_error_line(capsys.readouterr().err, message)


def test_a_tilde_in_a_path_is_the_home_folder(checkpoint, tmp_path, monkeypatch, capsys):
    """The shell leaves `--output=~/out.mp4` (and a quoted "~/...") as it is: the app wrote
    into a new folder named `~` in the working directory. Paths are now expanded as a shell would."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    cv2.imwrite(str(home / "hopper.png"), grace_hopper())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert webcam_main(["--model", checkpoint, "--no-display", "--source=~/hopper.png", "--output=~/out.mp4",
                        "--log=~/faces.jsonl"]) == 0
    assert predict_main(["--model", checkpoint, "~/hopper.png"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["image"] == str(home / "hopper.png")
    assert sorted(p.name for p in home.iterdir()) == ["faces.jsonl", "hopper.png", "out.mp4"]
    assert not list(work.iterdir())


@pytest.mark.parametrize("flag", ["--log", "--output"])
def test_output_that_is_a_folder_fails_before_the_model_loads(still, tmp_path, flag, capsys):
    """With a model that would fail to load, the folder's line proves it was checked first."""
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", still, flag, str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, f"{flag} {tmp_path} is a folder; give a file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]  # nothing written


def test_output_that_is_no_video_name_fails_before_the_model_loads(still, tmp_path, capsys):
    """OpenCV cannot write out.txt; that used to surface only after the model had loaded."""
    out = tmp_path / "out.txt"
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", still, "--output", str(out)]) == 2
    one_error_line(capsys.readouterr().err, f"--output {out}: the annotated video needs a video name "
                                            f"(.mp4, .m4v, .mov, .avi, .mkv), e.g. --output {tmp_path / 'out.mp4'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]  # nothing written


@pytest.mark.parametrize("flag", ["--output", "--log"])
@pytest.mark.parametrize("kind", ["video", "folder"])
def test_an_output_that_is_the_source_fails_before_the_model_loads(tmp_path, flag, kind, capsys):
    """`--source clip.mp4 --output clip.mp4` renamed the annotated video over the clip it read."""
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    cv2.imwrite(str(tmp_path / "a.png"), grace_hopper())
    source, target = (clip, clip) if kind == "video" else (tmp_path, tmp_path / "a.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", str(source), flag, str(target)]) == 2
    # an image in the folder is no video name: refused for that first, as safely
    message = " is the source being read" if (flag, kind) != ("--output", "folder") else ": the annotated video needs"
    one_error_line(capsys.readouterr().err, f"{flag} {target}{message}")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder that takes no new file")
@pytest.mark.parametrize("flag, name", [("--output", "out.mp4"), ("--log", "faces.jsonl")])
def test_a_folder_that_takes_no_file_is_one_line(checkpoint, still, flag, name, capsys):
    """The writable-folder check asks os.access, which says yes to root wherever the file system says
    no (/proc; a root-squashed NFS share): the output's temporary file then failed to open with a
    traceback, the run lost. A file that cannot be created is now one line naming it, exit 2."""
    target = f"/proc/{name}"
    assert webcam_main(["--model", checkpoint, "--no-display", "--source", still, flag, target]) == 2
    one_error_line(capsys.readouterr().err, f"{target}")


def test_a_log_over_a_file_the_app_did_not_write_is_refused(checkpoint, still, tmp_path, capsys):
    """`--log README.md` (or params.yaml: a slip of the shell's completion) replaced the file with the
    frames' JSON lines. A --log that exists must be a log of ours (its first line a frame's record),
    which is replaced as before; anything else is refused before the model loads."""
    notes = tmp_path / "notes.md"
    for text in ("# my notes\n", "\n# my notes\n"):  # a blank first line passed as an empty file
        notes.write_text(text)
        assert webcam_main(["--model", "nope.pt", "--no-display", "--source", still, "--log", str(notes)]) == 2
        one_error_line(capsys.readouterr().err, f"--log {notes} is a file the app did not write")
        assert notes.read_text() == text
    log = tmp_path / "faces.jsonl"
    for _ in range(2):  # a new log, then that log replaced
        assert webcam_main(["--model", checkpoint, "--no-display", "--source", still, "--log", str(log)]) == 0
        assert json.loads(log.read_text().splitlines()[0])["frame"] == 0


def test_output_and_log_in_one_file_are_refused(still, tmp_path, capsys):
    same = tmp_path / "out.mp4"
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", still, "--output", str(same),
                        "--log", str(same)]) == 2
    one_error_line(capsys.readouterr().err, f"--output and --log are the same file {same}")
    assert not same.exists()


def unused_x_display() -> str:
    """An X display name no server listens on: neither its socket file nor its abstract socket."""
    abstract = Path("/proc/net/unix").read_text() if Path("/proc/net/unix").exists() else ""
    number = next(n for n in range(4093, 5000)
                  if not Path(f"/tmp/.X11-unix/X{n}").exists() and f"@/tmp/.X11-unix/X{n}" not in abstract)
    return f":{number}"


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("xcb") is None,
                    reason="an X display is asked through libxcb, Linux's X client library")
def test_a_display_that_does_not_answer_fails_before_the_model_loads(still, monkeypatch, capsys):
    """DISPLAY set, but no X server there (ssh -X from a machine without one, a stale DISPLAY in tmux or
    a container): Qt aborted the whole process (SIGABRT, exit 134) with five lines of its own, after the
    model had loaded and the first frame was processed. The display is now asked first, as Qt would."""
    display = unused_x_display()
    monkeypatch.setenv("DISPLAY", display)
    assert webcam_main(["--model", "nope.pt", "--source", still]) == 2
    one_error_line(capsys.readouterr().err, f"no X display answers at DISPLAY={display}")


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("xcb") is None,
                    reason="an X display is asked through libxcb, Linux's X client library")
def test_a_display_host_that_never_answers_costs_seconds_not_minutes(still, monkeypatch, capsys):
    """DISPLAY=HOST:N where HOST drops the packets: libxcb's connect() waited 134 s (the kernel's SYN
    retries), silently, before the model loaded. A listener whose queue is full drops them too."""
    import socket

    import emovision.webcam as webcam

    listener = socket.socket()
    number = next(n for n in range(4093, 5000) if listener.connect_ex(("127.0.0.1", 6000 + n)) != 0
                  and not listener.bind(("127.0.0.1", 6000 + n)))
    listener.listen(0)
    queued = [socket.socket() for _ in range(4)]
    try:
        for pending in queued:  # never accepted: the queue fills, and later SYNs go unanswered
            pending.setblocking(False)
            pending.connect_ex(("127.0.0.1", 6000 + number))
        monkeypatch.setattr(webcam, "X_CONNECT_TIMEOUT_S", 0.5)
        monkeypatch.setenv("DISPLAY", f"127.0.0.1:{number}")
        started = time.monotonic()
        assert webcam_main(["--model", "nope.pt", "--source", still]) == 2
        one_error_line(capsys.readouterr().err, f"no X display answered at DISPLAY=127.0.0.1:{number} within 0.5 s")
        assert time.monotonic() - started < 60
    finally:
        for sock in (*queued, listener):
            sock.close()


@pytest.mark.skipif(shutil.which("Xvfb") is None or ctypes.util.find_library("xcb") is None,
                    reason="needs Xvfb (apt install xvfb) and libxcb")
def test_a_display_that_refuses_this_client_says_so(still, tmp_path, monkeypatch, capfd):
    """A display that answers but wants an xauth cookie this user lacks (sudo, a container given the X
    socket alone) was 'no X display answers', after a line libxcb printed itself. It now says the
    server's refusal, in the one line."""
    def counted(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    cookie = tmp_path / "xauth"  # one entry (any host, any display: family 0xffff) the server admits
    cookie.write_bytes(b"\xff\xff" + counted(b"") + counted(b"") + counted(b"MIT-MAGIC-COOKIE-1")
                       + counted(os.urandom(16)))
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-auth", str(cookie), "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        display = f":{server.stdout.readline().strip()}"
        monkeypatch.setenv("DISPLAY", display)
        monkeypatch.setenv("XAUTHORITY", str(tmp_path / "none"))
        assert webcam_main(["--model", "nope.pt", "--source", still]) == 2
        one_error_line(capfd.readouterr().err, f"the X display at DISPLAY={display} refused this client: "
                                               "Authorization required")
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("flag", ["--source", "--model"])
def test_an_empty_source_or_model_is_refused(still, tmp_path, monkeypatch, flag, capsys):
    """`--source "$CLIP"` with CLIP unset ran on the working folder and every image below it (Path("")
    is "."), and `--model ""` was refused as the folder "." with no config.json."""
    monkeypatch.chdir(tmp_path)
    cv2.imwrite(str(tmp_path / "a.png"), grace_hopper())
    args = {"--model": "nope.pt", "--source": still, flag: ""}
    assert webcam_main(["--no-display", "--log", "faces.jsonl", *(x for kv in args.items() for x in kv)]) == 2
    one_error_line(capsys.readouterr().err, "--source is empty" if flag == "--source" else "model reference is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "still.png"]


@pytest.mark.parametrize("app, args, name", [
    ("webcam", ["--output="], "--output"), ("webcam", ["--log="], "--log"),
    ("webcam", ["--detector", "haar", "--cascade="], "--cascade"),
    ("predict", [""], "images"), ("predict", ["--detector", "haar", "--cascade=", "{still}"], "--cascade")])
def test_an_empty_path_is_refused_naming_its_flag(still, tmp_path, monkeypatch, app, args, name, capsys):
    """`--output "$OUT"` with OUT unset was taken as the folder "." ("--output . is a folder", a name
    the user never typed), `--cascade ""` as "cascade file not found: .", and `predict ""` as
    "cannot read image .: a folder". An empty path is now refused by the parser, naming the flag."""
    monkeypatch.chdir(tmp_path)
    args = [a.format(still=still) for a in args]
    argv = ["--model", "nope.pt", *args] + (["--no-display", "--source", still] if app == "webcam" else [])
    with pytest.raises(SystemExit) as exit_:
        (webcam_main if app == "webcam" else predict_main)(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: argument {name}: an empty path" in err.splitlines()[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]


def test_corrupt_video_fails_before_the_model_loads(tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096)
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", str(broken)]) == 2
    one_error_line(capsys.readouterr().err, f"cannot open video {broken}")


def test_truncated_video_is_reported(checkpoint, tmp_path, capsys):
    """An AVI cut in half: the header still announces 40 frames. The frames that decode are
    processed and logged; one warning line says how many of how many, and the exit is 1."""
    full, cut, log = tmp_path / "full.avi", tmp_path / "cut.avi", tmp_path / "log.jsonl"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(40):
        writer.write(np.full((240, 320, 3), 3 * i, np.uint8))
    writer.release()
    data = full.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    assert webcam_main(["--model", checkpoint, "--no-display", "--source", str(cut), "--log", str(log)]) == 1
    read = len(read_log(log))
    assert 0 < read < 40
    one_error_line(capsys.readouterr().err, f"warning: {cut} ended after {read} of the 40 frames")
    assert webcam_main(["--model", checkpoint, "--no-display", "--source", str(full)]) == 0  # the whole file: no warning
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("ref, message", [
    ("models:/nope/Production", "Registered Model with name=nope not found"),
    ("models:/fer/Staging", "stages: Production"),
])
def test_bad_registry_refs(in_trained, still, ref, message, capsys):
    assert webcam_main(["--model", ref, "--no-display", "--source", still]) == 2
    one_error_line(capsys.readouterr().err, message)


def test_a_missing_store_named_by_the_environment_says_so(still, tmp_path, monkeypatch, capsys):
    """MLFLOW_TRACKING_URI naming an SQLite file that does not exist (a typo) was answered as if the
    project's own store were missing: '(the project root is the nearest folder with dvc.yaml from
    ... up); run this from the project, or set MLFLOW_TRACKING_URI', to a user who had set it."""
    store = tmp_path / "typo" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    assert webcam_main(["--model", "models:/fer/Production", "--no-display", "--source", still]) == 2
    one_error_line(capsys.readouterr().err, f"error: no MLflow store at {store}, the SQLite file MLFLOW_TRACKING_URI "
                                            "names: correct it, or unset it to use the project's store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.png"]  # no store made


def test_errors_in_a_real_process(in_trained, still, tmp_path):
    """Exit code 2 and one line, without a traceback, from `python -m` with MLflow loaded."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "emovision.webcam", "--model", "models:/nope/Production",
                          "--no-display", "--source", still], cwd=in_trained, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    one_error_line(out.stderr, "Registered Model with name=nope not found")


def test_predict_cli(checkpoint, tmp_path, capsys):
    img, empty = tmp_path / "hopper.jpg", tmp_path / "empty.png"
    cv2.imwrite(str(img), grace_hopper())
    cv2.imwrite(str(empty), np.full((100, 100, 3), 128, np.uint8))
    assert predict_main(["--model", checkpoint, "--device", "cpu", str(img), str(empty)]) == 0
    captured = capsys.readouterr()
    (record,) = [json.loads(line) for line in captured.out.splitlines()]
    assert record["image"] == str(img) and len(record["box"]) == 4 and record["label"] in record["probs"]
    assert f"no face found in {empty}" in captured.err
    assert predict_main(["--model", checkpoint, str(img), "nope.jpg"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # a bad file fails before any output
    one_error_line(captured.err, "cannot read image nope.jpg")


@pytest.mark.parametrize("args, message", [
    (["--min-face", "0"], "--min-face must be >= 12 px with --detector mtcnn (its smallest window; a smaller "
                          "face would need each image enlarged), got 0"),
    (["--min-face", "8"], "--min-face must be >= 12 px with --detector mtcnn"),
    (["--max-faces", "-1"], "--max-faces must be >= 0 (0: all faces), got -1"),
])
def test_predict_bad_flags(checkpoint, tmp_path, args, message, capsys):
    img = tmp_path / "hopper.jpg"
    cv2.imwrite(str(img), grace_hopper())
    assert predict_main(["--model", checkpoint, *args, str(img)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_error_line(captured.err, message)


def test_predict_does_not_hold_every_image_in_memory(checkpoint, tmp_path, capsys):
    """predict read every image before the first (so a bad file fails before any output) and
    kept them all: `predict photos/*.jpg` held each photo's pixels to the end, 12 GB for a
    thousand 12 MP photos. They are now read again in turn. 40 images of 1200x1200 held 65 MB (6 now);
    numpy's buffers are what tracemalloc traces (torch's are not)."""
    import tracemalloc

    cv2.imwrite(str(tmp_path / "0.png"), np.full((1200, 1200), 128, np.uint8))
    images = [tmp_path / f"{i}.png" for i in range(40)]
    for path in images[1:]:
        os.link(images[0], path)
    assert predict_main(["--model", checkpoint, str(images[0])]) == 0  # what it imports is not traced
    tracemalloc.start()
    try:
        assert predict_main(["--model", checkpoint, *map(str, images)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert capsys.readouterr().err.count("no face found") == 41
    assert peak < 20e6, f"{peak / 1e6:.0f} MB traced at the peak"


def test_predict_reads_a_pipe(checkpoint, tmp_path, capsys):
    """`predict <(cat photo.jpg)` gets /dev/fd/63, a pipe: np.fromfile failed on it ("unreadable
    image file (OSError)"), and predict's second read of it (the first checks every file up
    front) would find it empty. Its bytes are read as a stream now and kept from the first read;
    the same photo from a regular file gives the same record."""
    import threading

    img = tmp_path / "hopper.jpg"
    cv2.imwrite(str(img), grace_hopper())
    read, write = os.pipe()

    def feed():
        with contextlib.suppress(BrokenPipeError), os.fdopen(write, "wb") as f:
            f.write(img.read_bytes())  # more than a pipe holds: written while predict reads

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        code = predict_main(["--model", checkpoint, f"/dev/fd/{read}", str(img)])
    finally:
        os.close(read)  # a reader that gave up leaves the feeder a broken pipe, not a wait
        feeder.join()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    piped, regular = [json.loads(line) for line in captured.out.splitlines()]
    assert piped.pop("image") == f"/dev/fd/{read}" and regular.pop("image") == str(img)
    assert piped == regular


@pytest.mark.parametrize("args, message", [
    (["--detect-every", "20"], "--detect-every 20: the 20 frames {video} has hold fewer than 2 detection rounds, and a "
                               "face is shown only once 2 rounds agree (none would be); give at most 19"),
    (["--max-frames", "8", "--detect-every", "8"], "--detect-every 8: the 8 frames --max-frames reads hold fewer"),
    (["--max-frames", "1"], "--max-frames 1: a face in a video is shown only once 2 detection rounds agree, so 1 "
                            "frame(s) would show none; give at least 2"),
    (["--min-face", "481"], "--min-face 481 is larger than the frames of {video} (640x480): no face could be found; "
                            "give at most 480"),
])
def test_flags_that_can_only_find_nothing_are_refused(tmp_path, args, message, capsys):
    """--detect-every at or past a video's length detects once, and a face is shown only once two
    rounds agree; a --min-face over the frame's side fits no face: both found nothing, exit 0.
    Refused before the model loads ('nope.pt' would fail next)."""
    video = make_benchmark_video(tmp_path / "v.mp4", frames=20)
    assert webcam_main(["--model", "nope.pt", "--no-display", "--source", str(video), *args]) == 2
    one_error_line(capsys.readouterr().err, message.format(video=video))


def test_the_largest_detect_every_a_video_allows_still_runs_and_a_camera_is_not_counted(checkpoint, tmp_path):
    from emovision.sources import LiveSource
    from emovision.webcam import build_parser, check_source_fits

    video = tmp_path / "still_face.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    frame = blank()
    frame[:, 64:576] = cv2.resize(grace_hopper(), (512, 480))
    for _ in range(20):
        writer.write(frame)
    writer.release()
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", checkpoint, "--no-display", "--source", str(video), "--detect-every", "19",
                        "--log", str(log)]) == 0
    assert [r["frame"] for r in read_log(log) if r["faces"]] == [19]  # found on frames 0 and 19, shown on 19
    args = build_parser().parse_args(["--source", "0", "--detect-every", "1000"])
    with LiveSource(cv2.VideoCapture(str(video)), "camera 0") as camera:  # live: no frame count
        check_source_fits(args, camera)


def test_a_min_face_larger_than_some_images_of_a_folder_is_said(checkpoint, tmp_path, capsys):
    """In a folder of photos of several sizes a --min-face larger than some is not refused (the
    others are searched), but no longer passes in silence; predict says why it found no face."""
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), grace_hopper())  # 512x600
    cv2.imwrite(str(folder / "b.png"), cv2.resize(grace_hopper(), None, fx=2.5, fy=2.5))  # 1280x1500, face 560 px
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", checkpoint, "--no-display", "--source", str(folder), "--min-face", "520",
                        "--detector", "haar", "--log", str(log)]) == 0
    assert [len(r["faces"]) for r in read_log(log)] == [0, 1]
    err = capsys.readouterr().err
    one_error_line(err, "warning: --min-face 520 is larger than 1 of the 2 images (their shorter side): no face "
                        "could be found in them")
    assert predict_main(["--model", checkpoint, "--min-face", "520", "--detector", "haar",
                         str(folder / "a.png"), str(folder / "b.png")]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1
    one_error_line(captured.err, f"no face found in {folder / 'a.png'} (--min-face 520 is larger than its 512x600)")


def test_predict_finds_a_60_px_face_at_the_defaults(checkpoint, tmp_path, capsys):
    scale = 60 / ASTRONAUT_FACE[2]
    frame = np.full((480, 640, 3), 128, np.uint8)
    photo = cv2.resize(astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame[100:100 + photo.shape[0], 150:150 + photo.shape[1]] = photo
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), frame)
    assert predict_main(["--model", checkpoint, str(img)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    face = np.array([[150 + ASTRONAUT_FACE[0] * scale, 100 + ASTRONAUT_FACE[1] * scale, 60, 60]])
    assert iou_matrix(np.array([record["box"]]), face)[0, 0] > 0.6


def test_playback_clock_keeps_a_files_own_frame_rate():
    from emovision.webcam import PlaybackClock

    now = [100.0]
    clock = PlaybackClock(clock=lambda: now[0])

    def show(frame: int, processing_s: float) -> int:
        """Process a frame of a 30 fps file, then wait as the window would."""
        now[0] += processing_s
        wait = clock.wait_ms(frame / 30)
        now[0] += wait / 1000
        return wait

    assert show(0, 0.010) == 1  # the first frame is shown at once (the shortest wait, 1 ms)
    assert show(1, 0.010) == 22  # 10 ms of work: wait out the rest of the 1/30 s frame
    assert show(2, 0.050) == 1  # 16 ms late: shown at once, the clock does not move...
    assert show(3, 0.005) == 11  # ...so the next frame is back on time
    assert show(4, 5.0) == 1  # far behind (a slow machine, a debugger): restart from here
    assert show(5, 0.0) == 32  # no rush to catch up
    clock.restart()  # after a pause
    now[0] += 60.0
    assert show(6, 0.0) == 1 and show(7, 0.0) == 32


def test_a_still_stays_in_the_window_for_its_second(tmp_path):
    """README: a folder plays at one image a second in the window. The clock waited until each
    frame's own time, which for a video is its start: image 0 (time 0) was on screen only while
    image 1 was processed (0.14 s measured on Xvfb) and a single photo (`--source photo.jpg`)
    for 0.01 s before the window closed. A still is now held for its second; a video is as before."""
    from emovision.sources import STILL_SECONDS, open_source
    from emovision.webcam import playback_clock

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), grace_hopper())
    video = make_benchmark_video(tmp_path / "v.mp4", frames=3)
    for spec, first_ms in ((tmp_path / "a.png", 1000), (tmp_path, 1000), (video, 1)):
        now = [50.0]
        with open_source(str(spec)) as source:
            clock = playback_clock(source, clock=lambda: now[0])
            waits = []
            for _, stamp, _ in source:
                now[0] += 0.1  # processing
                waits.append(clock.wait_ms(stamp))
                now[0] += waits[-1] / 1000
        assert waits[0] == first_ms, (spec, waits)
        if source.stills:  # each image on screen one second, its processing included
            assert waits[1:] == [round(1000 * STILL_SECONDS) - 100] * (len(waits) - 1) and STILL_SECONDS == 1.0


SHOW_FRAMES = """
import time
from pathlib import Path
import cv2, numpy as np
from emovision import webcam
shown = None
for h, w in [(480, 640), (1920, 1080), (2160, 3840), (480, 640)]:
    shown = webcam.show(np.zeros((h, w, 3), np.uint8), shown)
    deadline = time.monotonic() + 10  # Qt lays the window out in its event loop: wait for it to settle
    while True:
        cv2.waitKey(50)
        size = cv2.getWindowImageRect(webcam.WINDOW)[2:]
        if tuple(size) == webcam.window_size(w, h) or time.monotonic() > deadline:
            break
    print(*size)
"""


def test_the_window_fits_a_laptop_screen_and_shows_small_frames_whole(tmp_path):
    """A 1080x1920 phone video opened a 1920-px-tall window (OpenCV's autosize), its lower half
    off a 768-px screen. The window now opens at the frame's size shrunk to fit 1280x720, keeping
    its aspect; a 640x480 frame is drawn 1:1. A real Qt window on Xvfb where it is installed."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt install xvfb)")
    # -displayfd: Xvfb picks a free display and writes its number once it accepts clients
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1366x768x24"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        display = f":{server.stdout.readline().strip()}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        done = subprocess.run([sys.executable, "-c", SHOW_FRAMES], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        sizes = [tuple(map(int, line.split())) for line in done.stdout.split("\n") if line.strip()]
        assert sizes == [(640, 480), (405, 720), (1280, 720), (640, 480)]
    finally:
        server.kill()
        server.wait()


class XKeys:
    """Key presses on an X display through its XTEST extension (libX11 and libXtst, as xdotool
    does), with the pointer moved over the app's window first: Xvfb runs no window manager, so
    the keyboard goes to the window under the pointer."""

    def __init__(self, display: str):
        self.x11, self.xtst = ctypes.CDLL("libX11.so.6"), ctypes.CDLL("libXtst.so.6")
        self.x11.XOpenDisplay.restype = ctypes.c_void_p
        self.x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self.x11.XStringToKeysym.restype = ctypes.c_ulong
        self.x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
        self.x11.XKeysymToKeycode.restype = ctypes.c_ubyte
        self.x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self.x11.XFlush.argtypes = self.x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        self.xtst.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                                   ctypes.c_ulong]
        self.display = self.x11.XOpenDisplay(display.encode())
        assert self.display, display

    def press(self, key: str, at: tuple[int, int] = (200, 200)) -> None:
        """Press and release `key` (an X keysym name: "s", "space", "Escape") over the point `at`."""
        self.xtst.XTestFakeMotionEvent(self.display, -1, *at, 0)
        code = self.x11.XKeysymToKeycode(self.display, self.x11.XStringToKeysym(key.encode()))
        self.xtst.XTestFakeKeyEvent(self.display, code, 1, 0)
        self.xtst.XTestFakeKeyEvent(self.display, code, 0, 0)
        self.x11.XFlush(self.display)

    def close(self) -> None:
        self.x11.XCloseDisplay(self.display)


class WindowApp:
    """`python -m emovision.webcam` in a window on its own Xvfb display, its stdout read line by
    line, keys pressed on it (`XKeys`)."""

    def __init__(self, app: subprocess.Popen, keys: XKeys):
        self.app, self.keys, self.saved = app, keys, []
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in app.stdout], daemon=True).start()

    def snapshot(self, timeout: float = 60.0) -> int:
        """Press s until the app says it saved a snapshot (a key pressed before the window is up
        is lost); the frame index in its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keys.press("s")
            with contextlib.suppress(queue.Empty):
                while not (line := self.lines.get(timeout=0.5)).startswith("saved snapshot_"):
                    pass
                self.saved.append(int(line.split("_")[1].split(".")[0]))
                return self.saved[-1]
            assert self.app.poll() is None, self.app.stderr.read()
        raise AssertionError("no snapshot saved")

    def window_up(self) -> None:
        """Wait for the window to take keys (a snapshot saved), and for any second snapshot of that
        wait, read late."""
        self.snapshot()
        time.sleep(1.0)
        self.output()

    def output(self) -> list[str]:
        """The lines printed since the last call; snapshots among them recorded."""
        lines = [self.lines.get_nowait() for _ in range(self.lines.qsize())]
        self.saved += [int(line.split("_")[1].split(".")[0]) for line in lines if line.startswith("saved snapshot_")]
        return lines


@contextlib.contextmanager
def window_app(checkpoint: str, tmp_path: Path, *flags: str) -> Iterator[WindowApp]:
    """The app on a 300-frame video (10 s at its own 30 fps) in a window on a new Xvfb display."""
    video = make_benchmark_video(tmp_path / "v.mp4", frames=300)
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1366x768x24"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    app = keys = None
    try:
        display = f":{server.stdout.readline().strip()}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        app = subprocess.Popen([sys.executable, "-u", "-m", "emovision.webcam", "--model", checkpoint,
                                "--source", str(video), *flags], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        keys = XKeys(display)
        yield WindowApp(app, keys)
    finally:
        if keys is not None:
            keys.close()
        for process in (app, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


NEEDS_XTEST = pytest.mark.skipif(shutil.which("Xvfb") is None or not ctypes.util.find_library("Xtst"),
                                 reason="needs Xvfb and libXtst (apt install xvfb libxtst6)")


@NEEDS_XTEST
@pytest.mark.parametrize("quit_key", ["q", "Escape"])
def test_the_windows_keys_save_pause_and_quit(checkpoint, tmp_path, quit_key):
    """README's keys, pressed on a real window: s saves the frame shown, space pauses (two
    snapshots while paused are of consecutive frames: each key read in a pause shows the next
    frame), q or Esc quits at the frame shown, exit 0, the video unfinished. Nothing tested them."""
    with window_app(checkpoint, tmp_path) as window:
        window.window_up()
        window.keys.press("space")
        time.sleep(0.5)  # playing, this would be ~15 frames
        first = window.snapshot()
        time.sleep(0.5)
        second = window.snapshot()
        assert second == first + 1, window.saved
        window.keys.press(quit_key)
        assert window.app.wait(timeout=60) == 0, window.app.stderr.read()
        time.sleep(0.2)  # the reader thread's last lines
        out = window.output()
        assert out[-1].startswith(f"{second + 2} frames, "), out  # the frame after the last snapshot, then quit
        names = sorted(p.name for p in tmp_path.glob("snapshot_*.png"))
        assert names == [f"snapshot_{i:06d}.png" for i in sorted(window.saved)]


@NEEDS_XTEST
def test_kill_stops_a_paused_window(checkpoint, tmp_path):
    """README: Ctrl-C or kill (SIGTERM) stops the app with exit 130, the outputs finished. Paused,
    the window waited for a key (cv2.waitKey(0)), so a kill was taken only at the next key press:
    still running 8 s after SIGTERM, until a key was pressed on the window."""
    log = tmp_path / "faces.jsonl"
    with window_app(checkpoint, tmp_path, "--log", str(log)) as window:
        window.window_up()
        window.keys.press("space")
        time.sleep(0.5)  # OpenCV's Qt window keeps one key: a second one pressed at once replaces it
        shown = window.snapshot()  # paused: the frame after this one is shown, and stays
        time.sleep(1.0)  # that frame processed: the app waits on the window
        window.app.send_signal(signal.SIGTERM)
        try:
            code = window.app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("a paused window ignored SIGTERM for 15 s")
        assert code == 130, window.app.stderr.read()
        assert [r["frame"] for r in read_log(log)] == list(range(shown + 2))


def test_the_bench_runs_the_apps_loop_headless_writing_nothing(checkpoint, tmp_path, monkeypatch):
    """`stages.bench` calls the app's loop through `benchmark_pipeline`, which builds its options
    (`RunOptions`) itself: headless, no output, no log, no frame limit."""
    from emovision.inference import load_classifier
    from emovision.webcam import RunOptions, benchmark_pipeline, build_parser

    video = make_benchmark_video(tmp_path / "bench.mp4", frames=20)
    monkeypatch.chdir(tmp_path)
    summary = benchmark_pipeline(load_classifier(checkpoint, "cpu"), video)
    assert summary["frames"] == 20 and summary["faces"] > 0 and summary["tracks"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.mp4", "model.pt"]
    args = build_parser().parse_args(["--no-display", "--log", "f.jsonl", "--max-frames", "5", "--fast"])
    assert RunOptions.from_args(args) == RunOptions(display=False, fast=True, log=Path("f.jsonl"), max_frames=5)


SHOT = 24  # frames in each shot of the cut videos


def write_video(path, frames) -> list[np.ndarray]:
    """Write `frames` as a 30 fps mp4v video and return them as decoded (what the app reads)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    for frame in frames:
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while (read := cap.read())[0]:
        decoded.append(read[1])
    return decoded


@pytest.mark.parametrize("background", [128, 200])  # behind the second face: the same grey, another
def test_a_cut_to_another_face_at_the_same_place_starts_a_new_track(tmp_path, background):
    """An edited video cuts from grace_hopper to the astronaut at the same place and size: the
    astronaut gets a new id, and the shot after the cut is processed as if it were a video of
    its own from the cut frame on (no probability, box or velocity of grace_hopper's track carried
    over; the cut frame's detection round is the new shot's first, so the astronaut is shown from
    its frame 2, as in a new video). Before, the astronaut took track 1 and its 'happy' rose from
    grace_hopper's 'neutral' over 4 frames; then, the cut frame ran no detection round and the
    astronaut was shown a frame later than in a new video."""
    from emovision.faces import EmotionPipeline
    from emovision.inference import load_classifier
    from emovision.webcam import torch_threads

    frames = [face_frame(grace_hopper(), HOPPER_FACE, 300 + i, 230, 110)[0] for i in range(SHOT)]
    frames += [face_frame(astronaut(), ASTRONAUT_FACE, 303 + i, 232, 110, background)[0] for i in range(SHOT)]
    decoded = write_video(tmp_path / "cut.mp4", frames)
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", "pretrained", "--source", str(tmp_path / "cut.mp4"), "--no-display",
                        "--log", str(log), "--device", "cpu"]) == 0
    records = read_log(log)
    ids = [{f["track_id"] for r in shot for f in r["faces"]} for shot in (records[:SHOT], records[SHOT:])]
    assert len(ids[0]) == 1 and len(ids[1]) == 1 and not ids[0] & ids[1], ids
    assert [r["frame"] for r in records if r["cut"]] == [SHOT + 1]  # known one frame late
    assert not records[SHOT]["faces"]  # the cut frame shows neither face
    fresh = EmotionPipeline(load_classifier("pretrained", "cpu"))
    with torch_threads(1):  # as the app runs
        alone = [[{**f.to_dict(), "track_id": None} for f in fresh.process(frame).faces] for frame in decoded[SHOT:]]
    assert [[{**f, "track_id": None} for f in r["faces"]] for r in records[SHOT:]] == alone
    assert sum(map(bool, alone)) >= SHOT - 4  # the astronaut is found


@pytest.mark.parametrize("seed", [0, 1])
def test_a_light_switched_on_and_a_moving_face_keep_one_track(tmp_path, seed):
    """No cut in a webcam's video: the light switched on (x0.5 -> x1.5 in one frame) or off, and
    a face moving 20-30 px a frame, then jumping 60 px in one: one id, every frame shows the face
    once it is confirmed, no frame taken for a cut."""
    rng = np.random.default_rng(seed)
    photo, face = (grace_hopper(), HOPPER_FACE) if seed % 2 == 0 else (astronaut(), ASTRONAUT_FACE)
    gains = (0.5, 1.5) if seed % 2 == 0 else (1.5, 0.5)
    speed, cx, background = rng.uniform(20, 30), 160.0, int(rng.integers(60, 200))
    frames = []
    for i in range(2 * SHOT):
        cx += (60 if i == SHOT + 8 else speed) * (1 if (i // 8) % 2 == 0 else -1)  # turns every 8 frames
        frame = face_frame(photo, face, cx, 240, 120, background)[0]
        frames.append(np.clip(frame * gains[i >= SHOT], 0, 255).astype(np.uint8))
    write_video(tmp_path / "live.mp4", frames)
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", "pretrained", "--source", str(tmp_path / "live.mp4"), "--no-display",
                        "--log", str(log), "--device", "cpu"]) == 0
    records = read_log(log)
    assert not any(r["cut"] for r in records)
    assert {f["track_id"] for r in records for f in r["faces"]} == {1}
    assert sum(len(r["faces"]) == 1 for r in records) >= len(records) - 4


def test_a_snapshot_never_replaces_an_earlier_one_and_a_failed_one_keeps_the_app_running(tmp_path, capsys):
    """The window's `s` key wrote `snapshot_<frame>.png` over whatever had that name (a second run's
    frame 120 replaced the first run's), and printed 'saved' even where nothing could be written."""
    from emovision.webcam import save_snapshot

    first, second = grace_hopper(), 255 - grace_hopper()
    assert save_snapshot(first, 120, tmp_path) == tmp_path / "snapshot_000120.png"
    kept = (tmp_path / "snapshot_000120.png").read_bytes()
    assert save_snapshot(second, 120, tmp_path) == tmp_path / "snapshot_000120-2.png"
    assert (tmp_path / "snapshot_000120.png").read_bytes() == kept
    assert np.array_equal(cv2.imread(str(tmp_path / "snapshot_000120-2.png")), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot_000120-2.png", "snapshot_000120.png"]
    capsys.readouterr()
    assert save_snapshot(first, 7, Path("/proc")) is None  # no file can be made there, even as root
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("warning: snapshot not saved: cannot write /proc/")

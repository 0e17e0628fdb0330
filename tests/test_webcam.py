"""The webcam app, headless on videos built from real photos, with a registry model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import pytest

from emovision.webcam import main as webcam_main
from tests.conftest import REPO
from tests.media import grace_hopper, make_video

DETECT_EVERY = 2
SETTLE = DETECT_EVERY * 2  # frames after a scene change before the display must agree


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "faces.mp4", frames_per_scene=20)


def test_headless_run_on_video(in_trained, video, tmp_path, capsys):
    out, log = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    code = webcam_main(["--model", "models:/fer/Production", "--source", str(video.path), "--no-display",
                        "--output", str(out), "--log", str(log), "--device", "cpu",
                        "--detect-every", str(DETECT_EVERY)])
    assert code == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(len(video.has_face)))
    settled = [i for i in range(len(records)) if i < SETTLE or video.segment[i - SETTLE] == video.segment[i]]
    face_frames = [i for i in settled if video.has_face[i]]
    empty_frames = [i for i in settled if not video.has_face[i]]
    found = [i for i in face_frames if records[i]["faces"]]
    assert len(found) >= 0.9 * len(face_frames)
    assert all(not records[i]["faces"] for i in empty_frames)
    for scene in ("hopper", "astronaut"):  # one stable id while the face moves and grows
        ids = {f["track_id"] for i in face_frames if video.segment[i] == scene for f in records[i]["faces"]}
        assert len(ids) == 1, (scene, ids)
    face = records[found[0]]["faces"][0]
    assert set(face) == {"track_id", "box", "label", "probs"} and len(face["box"]) == 4
    assert face["label"] in face["probs"] and abs(sum(face["probs"].values()) - 1) < 1e-3
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(video.has_face)
    cap.release()
    assert "fps processing" in capsys.readouterr().out


def test_max_frames_and_image_folder(in_trained, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), grace_hopper())
    log = tmp_path / "log.jsonl"
    assert webcam_main(["--model", "models:/fer@champion", "--source", str(folder), "--no-display",
                        "--log", str(log), "--max-frames", "2", "--detect-every", "1"]) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2 and all(len(r["faces"]) == 1 for r in records)


@pytest.mark.parametrize("args, message", [
    (["--model", "models:/nope/Production"], "Registered Model with name=nope not found"),
    (["--model", "models:/fer/Staging"], "stages: Production"),
    (["--source", "7"], "cannot open camera 7"),
    (["--source", "missing.mp4"], "source not found: missing.mp4"),
])
def test_errors_are_one_line(in_trained, tmp_path, args, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "emovision.webcam", "--no-display", *args],
                         cwd=in_trained, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unreadable_file(in_trained, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    assert webcam_main(["--model", "models:/fer/1", "--source", str(bad), "--no-display"]) == 2
    assert "bad.mp4" in capsys.readouterr().err


def test_predict_cli(in_trained, tmp_path):
    img = tmp_path / "hopper.jpg"
    cv2.imwrite(str(img), grace_hopper())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "emovision.predict", "--model", "models:/fer/1", str(img)],
                         cwd=in_trained, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert record["image"] == str(img) and len(record["box"]) == 4 and record["label"] in record["probs"]
    bad = subprocess.run([sys.executable, "-m", "emovision.predict", "--model", "models:/fer/1", "nope.jpg"],
                         cwd=in_trained, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot read image nope.jpg" in bad.stderr

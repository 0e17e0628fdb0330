"""Detector on real photos, the IoU tracker, smoothing and frame sources."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from emovision.errors import SourceError
from emovision.faces import FaceTracker, HaarFaceDetector, iou_matrix
from emovision.sources import open_source
from tests.media import astronaut, camera, grace_hopper, make_video


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


@pytest.mark.parametrize("photo", [grace_hopper, astronaut])
def test_finds_the_face_in_real_photos(detector, photo):
    boxes = detector.detect(cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY))
    assert len(boxes) == 1 and boxes[0][2] >= 80


@pytest.mark.parametrize("image", [camera, lambda: np.full((480, 640, 3), 128, np.uint8)])
def test_no_face_where_there_is_none(detector, image):
    assert len(detector.detect(cv2.cvtColor(image(), cv2.COLOR_BGR2GRAY))) == 0


def test_bad_cascade_file(tmp_path):
    with pytest.raises(SourceError, match="cascade file not found"):
        HaarFaceDetector(tmp_path / "nope.xml")
    (tmp_path / "bad.xml").write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(SourceError, match="not a valid Haar cascade"):
        HaarFaceDetector(tmp_path / "bad.xml")


def test_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_tracker_keeps_ids_and_drops_lost_tracks():
    tr = FaceTracker(max_missed=1)
    ids = [t.id for t in tr.update(np.array([[100, 100, 80, 80]]))]
    for dx in range(5, 50, 5):  # a face moving right keeps its id
        assert [t.id for t in tr.update(np.array([[100 + dx, 100, 80, 80]]))] == ids
    both = tr.update(np.array([[145, 100, 80, 80], [400, 50, 60, 60]]))  # a second face
    assert [t.id for t in both] == [ids[0], ids[0] + 1]
    tr.update(np.array([[400, 50, 60, 60]]))  # first face missed once: kept
    assert len(tr.tracks) == 2
    tr.update(np.array([[400, 50, 60, 60]]))  # missed twice: dropped
    assert [t.id for t in tr.tracks] == [ids[0] + 1]


def test_max_faces_keeps_the_largest():
    tr = FaceTracker(max_faces=1)
    tracks = tr.update(np.array([[0, 0, 40, 40], [100, 100, 90, 90]]))
    assert len(tracks) == 1 and tracks[0].box[2] == 90


def test_smoothing_is_an_ema_reset_for_new_tracks():
    tr = FaceTracker(smooth=0.75)
    (t,) = tr.update(np.array([[0, 0, 50, 50]]))
    first, second = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(tr.smooth_probs(t, first), first)
    np.testing.assert_allclose(tr.smooth_probs(t, second), [0.75, 0.25])
    tr.update(np.zeros((0, 4)))
    tr.update(np.zeros((0, 4)))
    tr.update(np.zeros((0, 4)))
    (new,) = tr.update(np.array([[0, 0, 50, 50]]))
    assert new.id != t.id
    np.testing.assert_allclose(tr.smooth_probs(new, second), second)


def test_sources(tmp_path):
    truth = make_video(tmp_path / "v.mp4", frames_per_scene=3)
    with open_source(str(truth.path)) as src:
        frames = list(src)
    assert len(frames) == len(truth.has_face) and frames[0][2].shape == (480, 640, 3)
    for i, img in enumerate((grace_hopper(), camera())):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
    with open_source(str(tmp_path)) as src:
        assert [f[0] for f in src] == [0, 1]
    with open_source(str(tmp_path / "0.png")) as src:
        assert len(list(src)) == 1


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="cannot open camera 7"):
        open_source("7")
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(str(tmp_path / "broken.mp4"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="cannot read image"):
        list(open_source(str(tmp_path / "broken.jpg")))

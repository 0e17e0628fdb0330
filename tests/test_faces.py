"""Detector on real photos, the IoU tracker, smoothing and frame sources."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from emovision.errors import SourceError
from emovision.faces import FaceTracker, HaarFaceDetector, iou_matrix, square_crop
from emovision.sources import LiveSource, open_source
from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, blank, camera, grace_hopper, make_video


def gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


@pytest.mark.parametrize("photo, face", [(grace_hopper, HOPPER_FACE), (astronaut, ASTRONAUT_FACE)])
def test_finds_the_face_in_real_photos(detector, photo, face):
    boxes = detector.detect(gray(photo()))
    assert len(boxes) == 1 and iou_matrix(boxes, np.array([face]))[0, 0] > 0.6


@pytest.mark.parametrize("image", [camera, blank])
def test_no_face_where_there_is_none(detector, image):
    assert len(detector.detect(gray(image()))) == 0


def test_verifier_rejects_false_faces(detector):
    from skimage import data

    coins = data.coins()  # the frontal cascade alone sees a face in one coin
    assert len(HaarFaceDetector(verify=False).detect(coins)) == 1
    assert len(detector.detect(coins)) == 0


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
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


def test_square_crop_is_padded_and_clipped():
    frame = np.zeros((100, 200), np.uint8)
    assert square_crop(frame, (50, 20, 40, 50)).shape == (60, 60)  # 50 * 1.2, centred
    assert square_crop(frame, (180, 80, 40, 40)).shape == (24, 24)  # 48 wide, clipped at the corner


def test_tracker_keeps_ids_and_drops_lost_tracks():
    tr = FaceTracker(max_missed=1, min_hits=1)
    ids = [t.id for t in tr.update(np.array([[100, 100, 80, 80]]))]
    for dx in range(5, 50, 5):  # a face moving right keeps its id
        assert [t.id for t in tr.update(np.array([[100 + dx, 100, 80, 80]]))] == ids
    both = tr.update(np.array([[145, 100, 80, 80], [400, 50, 60, 60]]))  # a second face: a new id
    assert [t.id for t in both] == [ids[0], ids[0] + 1]
    tr.update(np.array([[400, 50, 60, 60]]))  # first face missed once: kept
    assert len(tr.tracks) == 2
    tr.update(np.array([[400, 50, 60, 60]]))  # missed twice: dropped
    assert [t.id for t in tr.tracks] == [ids[0] + 1]


def test_new_faces_are_shown_once_confirmed_and_held_through_one_miss():
    tr = FaceTracker(min_hits=2, max_missed=2)
    face = np.array([[100, 100, 80, 80]])
    tr.update(face)
    assert tr.active() == []  # one detection could be a false face
    tr.update(face)
    (track,) = tr.active()
    tr.update(np.zeros((0, 4)))
    assert tr.active() == [track]  # a single miss does not make the box blink
    tr.update(np.zeros((0, 4)))
    assert tr.active() == [] and tr.tracks == [track]  # hidden, but the id survives one more round


def test_box_smoothing_damps_jitter():
    tr = FaceTracker(box_smooth=0.5, min_hits=1)
    tr.update(np.array([[100, 100, 80, 80]]))
    (t,) = tr.update(np.array([[110, 100, 80, 80]]))
    np.testing.assert_allclose(t.box, [105, 100, 80, 80])


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
    for _ in range(3):  # lost long enough to be dropped
        tr.update(np.zeros((0, 4)))
    (new,) = tr.update(np.array([[0, 0, 50, 50]]))
    assert new.id != t.id
    np.testing.assert_allclose(tr.smooth_probs(new, second), second)
    off = FaceTracker(smooth=0.0)
    (t,) = off.update(np.array([[0, 0, 50, 50]]))
    off.smooth_probs(t, first)
    np.testing.assert_allclose(off.smooth_probs(t, second), second)


def test_sources(tmp_path):
    truth = make_video(tmp_path / "v.mp4", frames_per_scene=3)
    with open_source(str(truth.path)) as src:
        frames = list(src)
    assert len(frames) == len(truth.boxes) and frames[0][2].shape == (480, 640, 3)
    assert [f[0] for f in frames] == list(range(len(frames))) and not src.live and not src.stills
    for i, img in enumerate((grace_hopper(), camera())):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
    with open_source(str(tmp_path)) as src:  # sorted; the video in the folder is not an image
        assert [f[0] for f in src] == [0, 1] and src.stills
    with open_source(str(tmp_path / "0.png")) as src:
        assert len(list(src)) == 1


def test_live_source_keeps_only_the_newest_frame(tmp_path):
    truth = make_video(tmp_path / "v.mp4", frames_per_scene=10)
    with LiveSource(cv2.VideoCapture(str(truth.path)), "test stream") as src:
        got = []
        for index, stamp, frame in src:
            got.append(index)
            time.sleep(0.05)  # a consumer slower than the reader: frames are dropped, not queued
    assert got == list(range(len(got)))
    assert len(got) + src.dropped == len(truth.boxes) and src.dropped > 0


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="cannot open camera 7: no such device"):
        open_source("7")
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(str(tmp_path / "broken.mp4"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="cannot read image .*broken.jpg"):
        list(open_source(str(tmp_path / "broken.jpg")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))

"""Detector on real photos, the IoU tracker, smoothing and frame sources."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from emovision.errors import SourceError
from emovision.faces import PANEL_SIZE, FaceTracker, HaarFaceDetector, iou_matrix
from emovision.framing import Framing, crop_faces, eye_angles, fer_square
from emovision.sources import LiveSource, open_source
from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, blank, camera, face_frame, grace_hopper, make_video


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

    coins = cv2.resize(data.coins(), None, fx=2, fy=2)  # the primary cascade alone sees faces in two coins
    alone = HaarFaceDetector(verify=False).detect(coins)
    assert len(alone) == 2 and len(detector.detect(coins)) == 1


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


def test_framing_maps_a_box_to_a_square_and_mirrors_the_frame_outside_it():
    frame = np.arange(100 * 200, dtype=np.int64).reshape(100, 200).astype(np.uint8)
    framing = Framing(scale=1.2, dx=0.0, dy=0.1)
    assert fer_square((50, 20, 40, 50), framing) == pytest.approx((40, 20, 60))  # side 50 * 1.2, centre 5 px lower
    (inside,) = crop_faces(frame, [(50, 20, 40, 50)], framing)
    assert inside.shape == (60, 60) and np.shares_memory(inside, frame)  # a view, no copy
    (corner,) = crop_faces(frame, [(180, 80, 40, 40)], Framing(scale=1.0))
    assert corner.shape == (40, 40)  # still square: the part outside mirrors the frame about its edges
    np.testing.assert_array_equal(corner[:20, :20], frame[80:100, 180:200])
    np.testing.assert_array_equal(corner[:20, 20:], frame[80:100, 198:178:-1])  # the edge pixel not doubled
    np.testing.assert_array_equal(corner[20:, :20], frame[98:78:-1, 180:200])


@pytest.mark.parametrize("edge_x", [0, 640])
def test_a_face_cut_by_the_frame_edge_is_classified_like_the_whole_face(edge_x):
    """grace_hopper's face (120 px) 30% and 50% past the left or right edge, cut at the same box
    as in the middle of the frame: the shipped model's probabilities stay within 0.15 (total
    variation) of the whole face's, the same label. Measured at 100 and 140 px: 0.05-0.12 with
    the frame mirrored past the edge; 0.17-0.40 with its edge pixels repeated, the 50% cut
    changing the label."""
    from emovision.faces import classify_boxes
    from emovision.inference import load_classifier
    from emovision.mtcnn import MTCNN_FRAMING

    shipped = load_classifier("pretrained", "cpu")

    def probs(cx):
        frame, box = face_frame(grace_hopper(), HOPPER_FACE, cx, 240, 120)
        return classify_boxes(shipped, gray(frame), [box], MTCNN_FRAMING)[0]

    whole = probs(320)
    for outside in (0.3, 0.5):
        cut = probs(edge_x + (60 - outside * 120) * (1 if edge_x == 0 else -1))
        assert 0.5 * np.abs(cut - whole).sum() < 0.15 and cut.argmax() == whole.argmax(), outside


def test_levelled_crop_turns_the_eye_line_level():
    """Two "eyes" on a line tilted 20 degrees (the right one lower): `eye_angles` reads +20 and
    a crop with level 1 brings them onto one row, the square's centre staying put; level 0.5
    takes out half."""
    frame = np.full((200, 200), 50, np.uint8)
    centre, half = np.array([100.0, 100.0]), 30 * np.array([np.cos(np.radians(20)), np.sin(np.radians(20))])
    eyes = np.array([centre - half, centre + half])
    for x, y in eyes:
        cv2.circle(frame, (int(round(x)), int(round(y))), 4, 255, -1)
    (angle,) = eye_angles(eyes[None])
    assert angle == pytest.approx(20, abs=0.1)
    for level, left in ((1.0, 0.0), (0.5, 10.0)):
        (crop,) = crop_faces(frame, [(60, 60, 80, 80)], Framing(level=level), [angle])
        assert crop.shape == (80, 80)
        ys, xs = np.nonzero(crop > 150)
        spots = [(ys[xs < 40].mean(), xs[xs < 40].mean()), (ys[xs >= 40].mean(), xs[xs >= 40].mean())]
        tilt = np.degrees(np.arctan2(spots[1][0] - spots[0][0], spots[1][1] - spots[0][1]))
        assert tilt == pytest.approx(left, abs=1.5) and np.mean(spots, 0) == pytest.approx([40, 40], abs=1.5)
    (plain,) = crop_faces(frame, [(60, 60, 80, 80)], Framing(), [angle])  # level 0: the plain square
    np.testing.assert_array_equal(plain, frame[60:140, 60:140])


def test_tracker_smooths_the_eye_line_tilt_like_the_side():
    tr = FaceTracker(size_smooth=0.6, min_hits=1)
    (t,) = tr.update(np.array([[100, 100, 80, 80]]), angles=[10.0])
    assert t.angle == 10.0  # a new face starts from its own tilt
    (t,) = tr.update(np.array([[100, 100, 80, 80]]), angles=[0.0])
    assert t.angle == pytest.approx(6.0)
    (t,) = tr.update(np.array([[100, 100, 80, 80]]))  # a detector without landmarks: level
    assert t.angle == pytest.approx(3.6)


def test_tracker_keeps_ids_and_drops_lost_tracks():
    tr = FaceTracker(max_missed=1, min_hits=1)
    ids = [t.id for t in tr.update(np.array([[100, 100, 80, 80]]))]
    for dx in range(5, 50, 5):  # a face moving right keeps its id
        assert [t.id for t in tr.update(np.array([[100 + dx, 100, 80, 80]]))] == ids
    both = tr.update(np.array([[145, 100, 80, 80], [400, 50, 60, 60]]))  # a second face: a new id
    assert [t.id for t in both] == [ids[0], ids[0] + 1]
    tr.update(np.array([[400, 50, 60, 60]]))  # first face missed once: its id is kept
    assert len(tr.tracks) == 2
    tr.update(np.array([[400, 50, 60, 60]]))  # missed twice: dropped
    assert [t.id for t in tr.tracks] == [ids[0] + 1]


def test_a_lost_face_is_gone_at_once_but_keeps_its_id_when_refound_nearby():
    tr = FaceTracker(min_hits=2, max_missed=3)
    face = np.array([[100, 100, 80, 80]])
    tr.update(face)
    assert tr.active() == []  # one detection could be a false face
    tr.update(face)
    (track,) = tr.active()
    tr.update(np.zeros((0, 4)))
    assert tr.active() == [] and tr.tracks == [track]  # not shown (no ghost), id kept
    tr.update(np.zeros((0, 4)))
    (again,) = tr.update(np.array([[150, 110, 84, 84]]))  # moved 50 px while unseen: IoU 0.3, same face
    assert again is track and tr.active() == [track] and list(track.box) == [150, 110, 84, 84]
    (other,) = [t for t in tr.update(np.array([[400, 300, 80, 80]])) if t is not track]
    assert other.id != track.id  # far away: another face


def test_tracker_follows_a_face_by_its_motion_and_leaves_a_still_one_in_place():
    tr = FaceTracker(min_hits=1)
    tr.update(np.array([[100, 100, 80, 80]]))
    tr.advance(2)
    (t,) = tr.update(np.array([[150, 100, 80, 80]]))  # 25 px a frame
    np.testing.assert_allclose(t.velocity, [25, 0, 0])
    x = t.box[0]
    tr.advance()
    assert t.box[0] == pytest.approx(x + 25)  # the shown box is carried along between rounds
    tr.advance()
    np.testing.assert_allclose(t.predicted(), [200, 100, 80, 80])
    # 70 px from its last detection (IoU 0.07, beyond CENTRE_GATE), 20 px from where its motion
    # took it: the same face
    (again,) = tr.update(np.array([[220, 100, 80, 80]]))
    assert again is t
    tr = FaceTracker(min_hits=1)
    tr.update(np.array([[300, 300, 100, 100]]))
    tr.advance(2)
    (t,) = tr.update(np.array([[303, 298, 100, 100]]))  # detector jitter: slower than STILL_SPEED
    box = t.box.copy()
    tr.advance()
    np.testing.assert_array_equal(t.box, box)


def test_a_new_face_moving_most_of_its_side_a_round_is_confirmed():
    """A 100 px face moving 100 px a round (50 px a frame at detect_every 2): beyond IoU and
    CENTRE_GATE from its first box, so before every round started a new track and none was ever
    shown. The new track now takes the lost one's motion as a guess, and the next round finds
    the face where it leads: shown from the third round, one id."""
    tr = FaceTracker()
    shown = []
    for r in range(6):
        tr.advance(2)
        tr.update(np.array([[20 + 100 * r, 200, 100, 100]]))
        shown.append([t.id for t in tr.active()])
    assert shown[:2] == [[], []] and shown[2] and all(ids == shown[2] for ids in shown[2:]), shown


def test_faces_found_in_turn_or_leaving_and_entering_keep_their_own_ids():
    """No false merge from the guessed motion: two faces side by side (1.2 sides apart) that the
    detector finds in turn are each shown under their own id; a face that leaves while another
    enters a side away never lends it its id."""
    a, b = [100, 200, 100, 100], [220, 200, 100, 100]
    tr = FaceTracker()
    where: dict[int, set] = {}
    for r in range(8):
        tr.advance(2)
        tr.update(np.array([a if r % 2 == 0 else b]))
        for t in tr.active():
            where.setdefault(t.id, set()).add(int(t.raw[0]))
    assert sorted(where.values(), key=min) == [{100}, {220}], where
    tr = FaceTracker()
    for r in range(4):  # the first face, moving 25 px a frame to the top edge
        tr.advance(2)
        tr.update(np.array([[300, 150 - 50 * r, 100, 100]]))
    (first,) = tr.active()
    for r in range(4):  # gone; another face enters beside where it left, 20 px a frame
        tr.advance(2)
        tr.update(np.array([[440, -60 + 40 * r, 100, 100]]))
    (second,) = tr.active()
    assert second.id != first.id


def test_a_carried_box_stops_at_the_frame_edge():
    tr = FaceTracker(min_hits=1)
    tr.update(np.array([[500, 200, 100, 100]]))
    tr.advance()
    (track,) = tr.update(np.array([[535, 200, 100, 100]]))  # 35 px a frame to the right
    assert track.box[0] + 35 > 540
    tr.advance(frame_size=(640, 480))
    np.testing.assert_allclose(track.box[:2], [540, 200])  # stopped at the edge
    (track,) = tr.update(np.array([[570, 200, 100, 100]]))  # found across the edge, still 35 px a frame
    shown = track.box[0]
    assert shown + 100 > 640
    tr.advance(frame_size=(640, 480))
    assert track.box[0] == shown  # no further out than it was found
    tr.advance()  # without a frame size: carried on
    assert track.box[0] == pytest.approx(shown + 35)


def test_box_smoothing_damps_jitter():
    tr = FaceTracker(box_smooth=0.5, size_smooth=0.75, min_hits=1)
    tr.update(np.array([[100, 100, 80, 80]]))
    (t,) = tr.update(np.array([[110, 100, 80, 80]]))
    np.testing.assert_allclose(t.box, [105, 100, 80, 80])
    (t,) = tr.update(np.array([[101, 96, 88, 88]]))  # side 80 -> 82, centre (145, 140) -> (145, 140)
    np.testing.assert_allclose(t.box, [104, 99, 82, 82])


def test_max_faces_keeps_the_largest():
    tr = FaceTracker(max_faces=1)
    tracks = tr.update(np.array([[0, 0, 40, 40], [100, 100, 90, 90]]))
    assert len(tracks) == 1 and tracks[0].box[2] == 90


def test_smoothing_is_an_ema_reset_for_new_tracks():
    tr = FaceTracker(smooth=0.75, max_missed=2)
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
    with pytest.raises(SourceError, match="cannot open camera 99999999999: no such device"):  # not a C int
        open_source("99999999999")
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(str(tmp_path / "broken.mp4"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="cannot read image .*broken.jpg: unreadable image file"):
        open_source(str(tmp_path / "broken.jpg"))  # the source itself: refused before anything starts
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from emovision.inference import load_classifier
    from tests.media import model_ref

    return load_classifier(model_ref(tmp_path_factory.mktemp("model")), "cpu")


def drifting_hopper(background: int, noise_frames: int = 20) -> list[np.ndarray]:
    """The issue's video: grace_hopper resized to 300x256 (squashed by a quarter) on a flat grey
    640x480 frame, drifting 4 px right and 2 px down per frame for 60 frames; then frames of
    seeded noise (the slowest input for a cascade: ~90 ms a full scan)."""
    face = cv2.resize(grace_hopper(), (300, 256), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(60):
        frame = np.full((480, 640, 3), background, np.uint8)
        frame[20 + 2 * i:276 + 2 * i, 20 + 4 * i:320 + 4 * i] = face
        frames.append(frame)
    rng = np.random.default_rng(0)
    return frames + [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(noise_frames)]


@pytest.mark.parametrize("detector_name, background",
                         [("mtcnn", 40), ("mtcnn", 90), ("mtcnn", 160), ("mtcnn", 220), ("haar", 90)])
def test_drifting_face_on_flat_backgrounds(classifier, detector_name, background):
    """Found in >= 54 of 60 frames, one track id, nothing in the noise. Measured at greys 40,
    90, 160 and 220: MTCNN (the default) 56 (the first two frames wait for the confirmation
    round, frames 42-43 are missed), Haar 58."""
    from emovision.faces import EmotionPipeline, make_detector

    pipeline = EmotionPipeline(classifier, make_detector(detector_name))
    results = [pipeline.process(f) for f in drifting_hopper(background, 20 if background == 90 else 4)]
    faces = [r.faces for r in results[:60]]
    assert sum(len(f) == 1 for f in faces) >= 54
    assert {face.track_id for f in faces for face in f} == {1}
    assert not any(r.faces for r in results[60:])


def bouncing_face(photo: np.ndarray, face: tuple, width: int, speed: float, seed: int,
                  n: int = 90) -> list[tuple[np.ndarray, tuple]]:
    """(frame, face box) for a face `width` px wide crossing a 640x480 frame at `speed` px per
    frame, turning back at the edges; start, direction and background grey drawn from `seed`."""
    rng = np.random.default_rng(seed)
    background = int(rng.integers(40, 200))
    cx, cy = width / 2 + rng.uniform(0, 640 - width), width / 2 + rng.uniform(0, 480 - width)
    angle = rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(angle), speed * np.sin(angle)
    frames = []
    for _ in range(n):
        frames.append(face_frame(photo, face, cx, cy, width, background))
        vx = vx if width / 2 < cx + vx < 640 - width / 2 else -vx
        vy = vy if width / 2 < cy + vy < 480 - width / 2 else -vy
        cx, cy = cx + vx, cy + vy
    return frames


def track_figures(pipeline, frames: list[tuple[np.ndarray, tuple]]) -> tuple[int, set, int]:
    """Frames where a shown box is on the face (its centre inside the face's box, its side 0.45-2.2
    times the face's), the track ids of those boxes, and the boxes shown off the face."""
    found, ids, off = 0, set(), 0
    for frame, (tx, ty, tw, th) in frames:
        for face in pipeline.process(frame).faces:
            x, y, w, h = face.box
            on = tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th and 0.45 <= max(w, h) / max(tw, th) <= 2.2
            found, off = found + on, off + (not on)
            ids |= {face.track_id} if on else set()
    return found, ids, off


@pytest.mark.parametrize("photo, face, width, speed, detect_every, seed", [
    (grace_hopper, HOPPER_FACE, 120, 30, 2, 0),
    (astronaut, ASTRONAUT_FACE, 80, 25, 2, 5),
    (grace_hopper, HOPPER_FACE, 120, 20, 3, 2),
])
def test_a_fast_face_keeps_its_id(classifier, mtcnn, photo, face, width, speed, detect_every, seed):
    """A face moving a quarter of its width or more a frame is followed by its motion (the
    tracker's velocity from its last two detections): one id, found in >= 80 of 90 frames, at
    most 6 boxes off the face (after a turn at an edge). Measured on seeds 0-5: grace_hopper 120 px
    at 30 px/frame 85-88 frames, 0-3 off; the astronaut 80 px at 25 px/frame 86-88, 0-2 off;
    grace_hopper at 20 px/frame with detect_every 3 86-87, 0-1 off (before the carried box stopped
    at the frame's edge: 83-88 / 0-5, 83-86 / 2-5, 84-87 / 0-3). Before (the
    smoothed box, which trails the face, as the only reference): 2-3 ids on 5 of 6 seeds, 9-11
    ids and 50-67 frames, 1-3 ids and 65-84 frames."""
    from emovision.faces import EmotionPipeline

    pipeline = EmotionPipeline(classifier, mtcnn, detect_every)
    found, ids, off = track_figures(pipeline, bouncing_face(photo(), face, width, speed, seed))
    assert len(ids) == 1 and found >= 80 and off <= 6


def crossing_face(photo: np.ndarray, face: tuple, seed: int) -> list[tuple[np.ndarray, tuple]]:
    """(frame, face box) for a face 90-110 px wide crossing a 640x480 frame once, left to right,
    at 40-55 px a frame (0.75-1.2 of its side a detection round at detect_every 2), on a flat or
    (odd seeds) noisy background drawn from `seed`."""
    rng = np.random.default_rng(seed)
    width, speed, cy = rng.uniform(90, 110), rng.uniform(40, 55), rng.uniform(120, 360)
    background = int(rng.integers(40, 200))
    frames, cx = [], width / 2
    while cx <= 640 - width / 2:
        frame, box = face_frame(photo, face, cx, cy, width, background)
        if seed % 2:
            frame = np.clip(frame + rng.normal(0, 20, frame.shape), 0, 255).astype(np.uint8)
        frames.append((frame, box))
        cx += speed
    return frames


@pytest.mark.parametrize("seed", [0, 1])
def test_a_face_crossing_fast_is_shown(classifier, mtcnn, seed):
    """grace_hopper crossing the frame at 40-55 px a frame (11-14 frames): before, each
    detection round found her beyond the reach of her first box, so she was never shown (0
    frames on seeds 0-5); now from the third round on (frame 4): measured on seeds 0-5, all but
    those 4 frames (6-9 of 10-13), one id, no box off the face."""
    from emovision.faces import EmotionPipeline

    frames = crossing_face(grace_hopper(), HOPPER_FACE, seed)
    found, ids, off = track_figures(EmotionPipeline(classifier, mtcnn), frames)
    assert found >= len(frames) - 6 and len(ids) == 1 and off == 0, (found, len(frames), ids, off)


def face_at_edge(photo: np.ndarray, face: tuple, edge: str, outside: float, seed: int,
                 n: int = 20) -> list[tuple[np.ndarray, tuple]]:
    """(frame, face box) for a face held with `outside` of its box past one `edge` of a 640x480
    frame; width (90-150 px), place along the edge and background grey drawn from `seed`."""
    rng = np.random.default_rng(seed)
    background, width, along = int(rng.integers(40, 200)), rng.uniform(90, 150), rng.uniform(0.2, 0.8)
    half, past = width / 2, width / 2 - outside * width  # the face's centre from the edge, inwards
    cx = {"left": past, "right": 640 - past}.get(edge, half + along * (640 - width))
    cy = {"top": past, "bottom": 480 - past}.get(edge, half + along * (480 - width))
    return [face_frame(photo, face, cx, cy, width, background) for _ in range(n)]


@pytest.mark.parametrize("photo, face, edge, seed", [
    (grace_hopper, HOPPER_FACE, "left", 0),
    (grace_hopper, HOPPER_FACE, "right", 1),
    (grace_hopper, HOPPER_FACE, "bottom", 2),
    (astronaut, ASTRONAUT_FACE, "top", 3),
])
def test_a_face_half_outside_the_frame_is_found(classifier, mtcnn, photo, face, edge, seed):
    """A face held half outside the frame: boxed in >= 16 of 20 frames, one id, no box off it.
    Measured on seeds 0-5, both photos, each edge: 18 (all but the two confirmation frames), except
    grace_hopper cut at the top (her eyes at the edge: 18 on 1 seed of 6, else 0). Before (P-Net's
    windows inside the frame), 0 on 46 of those 48, 18 on 2 (the astronaut at the left)."""
    from emovision.faces import EmotionPipeline

    found, ids, off = track_figures(EmotionPipeline(classifier, mtcnn), face_at_edge(photo(), face, edge, 0.5, seed))
    assert found >= 16 and len(ids) == 1 and off == 0


@pytest.mark.parametrize("photo, face, width, speed, seed", [
    (grace_hopper, HOPPER_FACE, 120, 20, 2),
    (astronaut, ASTRONAUT_FACE, 100, 15, 5),
])
def test_a_face_turning_back_at_the_frame_edge_is_not_followed_out(classifier, mtcnn, photo, face, width, speed,
                                                                   seed):
    """At --detect-every 3 the box is carried two frames between detection rounds; at the frame's
    edge it stops, so a face bouncing off the edge has no box past it. Measured on seeds 0-5 (the
    box off the face / frames found): grace_hopper 120 px at 20 px a frame 0-1 / 86-87, the
    astronaut 100 px at 15 px 0 / 87; before (carried on out of the frame) 0-3 / 84-87 and
    0-3 / 84-87, 3 on these seeds."""
    from emovision.faces import EmotionPipeline

    found, ids, off = track_figures(EmotionPipeline(classifier, mtcnn, 3), bouncing_face(photo(), face, width, speed, seed))
    assert off == 0 and len(ids) == 1 and found >= 84


@pytest.mark.parametrize("seed", [1, 4])
def test_a_fast_zoom_keeps_the_face(classifier, mtcnn, seed):
    """grace_hopper's face zooming 80 -> 300 -> 80 px every 30 frames, shrinking by a third in the
    last 2 frames before each turn: found in 88 of 90 frames (all but the two confirmation frames)
    on seeds 0-5, one id; before, the size check against the smoothed, lagging side lost 2 frames
    at each turn (84)."""
    from emovision.faces import EmotionPipeline

    rng = np.random.default_rng(seed)
    background, cx, cy = int(rng.integers(40, 200)), rng.uniform(280, 360), rng.uniform(220, 260)
    frames = [face_frame(grace_hopper(), HOPPER_FACE, cx, cy, 80 + 220 * abs(np.sin(np.pi * i / 30)), background)
              for i in range(90)]
    found, ids, off = track_figures(EmotionPipeline(classifier, mtcnn), frames)
    assert len(ids) == 1 and found >= 86 and off == 0


@pytest.mark.parametrize("detector_name", ["mtcnn", "haar"])
@pytest.mark.parametrize("width", [40, 60, 100])
def test_medium_faces_are_found_at_the_defaults(detector_name, width):
    """The astronaut's face 40-100 px wide in a 640x480 frame (a face 1.5-2 m from a laptop camera)."""
    from emovision.faces import make_detector

    frame = astronaut_frame(width)
    (box,) = make_detector(detector_name).detect(gray(frame))
    assert abs(max(box[2:]) - width) < 0.3 * width


@pytest.mark.parametrize("detector_name", ["mtcnn", "haar"])
def test_a_4k_frame_is_searched_as_if_it_were_1920_px(detector_name):
    """A full scan costs in proportion to the frame's area: 4K video ran at 19 fps where 640x480
    ran at 80, a 12 MP photo took 0.9 s to scan, an 8000x8000 one 3.6-5.5 s and 1.7 GB. A frame
    over LARGE_FRAME_SIDE is now searched for faces from 80 px by default (4K: 42 fps, 12 MP:
    0.12 s, 8000x8000: 1.1 GB), a 56 px face there only with --min-face 40, as asked."""
    from emovision.faces import make_detector, smallest_face

    frame = np.full((2160, 3840, 3), 120, np.uint8)
    faces = []
    for photo, face, side, x, y in ((grace_hopper(), HOPPER_FACE, 400, 300, 300),
                                    (astronaut(), ASTRONAUT_FACE, 56, 3000, 1500)):
        f = side / face[2]
        img = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        frame[y:y + img.shape[0], x:x + img.shape[1]] = img
        faces.append((x + face[0] * f, y + face[1] * f, side, face[3] * f))
    assert smallest_face(frame.shape) == 80 and smallest_face((1080, 1920)) == 40
    found = {min_face: make_detector(detector_name, min_face=min_face).detect(gray(frame)) for min_face in (None, 40)}
    assert (iou_matrix(found[None], np.array(faces)) > 0.5).sum(0).tolist() == [1, 0]
    assert (iou_matrix(found[40], np.array(faces)) > 0.5).sum(0).tolist() == [1, 1]


def astronaut_frame(width: int, background: int = 128) -> np.ndarray:
    """scikit-image's astronaut scaled so that her face is `width` px wide, in a grey 640x480 frame."""
    scale = width / ASTRONAUT_FACE[2]
    photo = cv2.resize(astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[:400, :500]
    frame = np.full((480, 640, 3), background, np.uint8)
    frame[60:60 + photo.shape[0], 100:100 + photo.shape[1]] = photo
    return frame


def test_a_face_that_leaves_is_gone_by_the_next_detection_frame(classifier):
    from emovision.faces import EmotionPipeline

    face, empty = grace_hopper()[:480], np.full((480, 512, 3), 90, np.uint8)
    pipeline = EmotionPipeline(classifier, detect_every=2)
    results = [pipeline.process(f) for f in [face] * 7 + [empty] * 3]
    assert [len(r.faces) for r in results] == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert [f.detected for r in results[2:7] for f in r.faces] == [True, False, True, False, True]
    # frame 7 replaces the whole photo: a shot cut (`ShotCuts`), so the face is not carried onto
    # it (before, it was drawn there on the grey, then gone on frame 8, the next detection round);
    # frame 7 is scanned whole as the new shot's first round, and frame 8 confirms the cut and
    # ends the track
    assert results[7].full_scan and [r.cut for r in results] == [False] * 8 + [True, False]


def test_stills_share_nothing(classifier):
    from emovision.faces import EmotionPipeline

    pipeline = EmotionPipeline(classifier, stills=True)
    face = pipeline.process(grace_hopper())
    blank_after = pipeline.process(blank())
    assert len(face.faces) == 1 and face.faces[0].track_id is None and blank_after.faces == []


@pytest.fixture(scope="module")
def mtcnn():
    from emovision.faces import make_detector

    return make_detector("mtcnn")


@pytest.mark.parametrize("photo, face", [(grace_hopper, HOPPER_FACE), (astronaut, ASTRONAUT_FACE)])
def test_mtcnn_finds_the_face_and_its_landmarks(mtcnn, photo, face):
    (box,) = mtcnn.detect(gray(photo()))
    assert iou_matrix(np.array([box]), np.array([face]))[0, 0] > 0.5
    (marks,) = mtcnn.landmarks  # eyes, nose, mouth corners: inside the box, eyes above the mouth
    x, y, w, h = box
    assert ((marks >= [x, y]) & (marks <= [x + w, y + h])).all()
    assert marks[:2, 1].max() < marks[2, 1] < marks[3:, 1].min() and marks[0, 0] < marks[1, 0]
    (again,) = mtcnn.detect(gray(photo()), around=[box])  # the search around a known face
    assert iou_matrix(np.array([again]), np.array([box]))[0, 0] > 0.8


def test_mtcnn_sees_a_turned_face_and_no_face_where_there_is_none(mtcnn, detector):
    """camera.png's cameraman looks into his camera, his face turned three-quarters: a face to
    MTCNN (box checked by eye), none to the frontal Haar cascades. A blank frame has none."""
    (box,) = mtcnn.detect(gray(camera()))
    assert iou_matrix(np.array([box]), np.array([[199, 118, 56, 78]]))[0, 0] > 0.7
    assert len(detector.detect(gray(camera()))) == 0
    assert len(mtcnn.detect(gray(blank()))) == 0


def test_mtcnn_eye_line_follows_a_tilted_face(mtcnn, classifier):
    """grace_hopper turned 12 degrees counter-clockwise: MTCNN's eye line tilts by about -12
    degrees from the upright photo's, the pipeline's track carries that tilt, and the levelled
    crop (MTCNN_FRAMING.level of it) is what the classifier sees."""
    from emovision.faces import EmotionPipeline, landmark_angles

    upright = gray(grace_hopper())[:480]
    turned = cv2.warpAffine(upright, cv2.getRotationMatrix2D((265, 215), 12, 1.0), upright.shape[::-1],
                            borderMode=cv2.BORDER_REPLICATE)
    angles = []
    for img in (upright, turned):
        (box,) = mtcnn.detect(img)
        (angle,) = landmark_angles(mtcnn, 1)
        angles.append(angle)
    assert angles[1] - angles[0] == pytest.approx(-12, abs=3)
    pipeline = EmotionPipeline(classifier, mtcnn)
    for _ in range(3):
        pipeline.process(turned)
    (track,) = pipeline.tracker.active()
    assert track.angle == pytest.approx(angles[1], abs=2)
    assert mtcnn.framing.level > 0


def test_mtcnn_rescue_pass_finds_a_faint_face_and_no_face_in_textures(mtcnn):
    """A scan that finds nothing is retried at low P-Net/R-Net thresholds: grace_hopper at 15%
    contrast (a dim, washed-out face) is missed by the paper's thresholds and found by the
    retry; textures that low thresholds turn into faces (grass, gravel, a coffee cup filling
    the frame) stay faceless, whole and zoomed in."""
    from skimage import data

    from emovision.mtcnn import MTCNNFaceDetector

    faint = np.full((480, 640), 128, np.uint8)
    faint[:, :512] = (128 + (gray(grace_hopper())[:480].astype(float) - 128) * 0.15).astype(np.uint8)
    assert len(MTCNNFaceDetector(rescue_thresholds=None).detect(faint)) == 0
    (box,) = mtcnn.detect(faint)
    assert iou_matrix(np.array([box]), np.array([HOPPER_FACE]))[0, 0] > 0.6
    for name in ("grass", "gravel", "coffee", "coins", "brick"):
        img = getattr(data, name)()
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        for part in (img, img[: img.shape[0] * 3 // 5, : img.shape[1] * 3 // 5]):
            assert len(mtcnn.detect(cv2.resize(part, (640, 480), interpolation=cv2.INTER_AREA))) == 0, name


@pytest.mark.parametrize("photo, face", [(grace_hopper, HOPPER_FACE), (astronaut, ASTRONAUT_FACE)])
def test_mtcnn_finds_a_face_in_a_dim_noisy_room(mtcnn, photo, face):
    """A face at x0.2 brightness with sensor noise (sigma 12 grey levels): R-Net's and O-Net's
    crops, sampled bilinearly (1 pixel in 5 of a 130 px face), kept all the noise and missed it
    in all 8 seeded frames of each photo. The dim pass (area-averaged crops, only in a frame with
    nothing bright in it) finds 6 and 7 of 8 on single frames (the app's tracker carries a face
    between them); dark noise stays faceless."""
    found = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        frame, box = face_frame(photo(), face, rng.uniform(200, 440), rng.uniform(180, 300), rng.uniform(90, 170),
                                background=int(rng.integers(60, 200)))
        dim = np.clip(gray(frame).astype(float) * 0.2 + rng.normal(0, 12, frame.shape[:2]), 0, 255).astype(np.uint8)
        boxes = mtcnn.detect(dim)
        assert len(boxes) <= 1
        found += len(boxes) == 1 and iou_matrix(boxes, np.array([box]))[0, 0] > 0.4
        dark = np.clip(rng.normal(rng.uniform(10, 60), 12, frame.shape[:2]), 0, 255).astype(np.uint8)
        assert len(mtcnn.detect(dark)) == 0
    assert found >= 4


def test_mtcnn_finds_the_darker_of_two_faces_in_a_dim_room(mtcnn):
    """Two people in a dim noisy room, one a little better lit (x0.35 and x0.2, noise sigma 12):
    the dim pass ran only where the first pass found nothing, so with the brighter face found
    the darker one, found alone, was missed in every frame (0 of 8 seeds). Each face is boxed."""
    left, left_box = face_frame(grace_hopper(), HOPPER_FACE, 160, 240, 120)
    right, right_box = face_frame(astronaut(), ASTRONAUT_FACE, 480, 240, 120)
    scene = gray(np.concatenate([left[:, :320], right[:, 320:]], 1)).astype(float)
    truth = np.array([left_box, right_box])
    found = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        lit = scene * np.where(np.arange(640) < 320, *((0.35, 0.2) if seed % 2 else (0.2, 0.35)))
        boxes = mtcnn.detect(np.clip(lit + rng.normal(0, 12, lit.shape), 0, 255).astype(np.uint8))
        assert len(boxes) <= 2
        found += len(boxes) == 2 and (iou_matrix(truth, boxes).max(1) > 0.4).all()
    assert found >= 6


def dim_room_with_a_light(photo: np.ndarray, face: tuple, seed: int,
                          faceless: bool = False) -> tuple[np.ndarray, tuple]:
    """(gray frame, face box): a face in a dim room (x0.2, noise sigma 12) on one half, a window
    (150x100 px, 5% of the frame) or a lamp with its glow on the other; place drawn from `seed`.
    `faceless`: the same room, its wall only."""
    rng = np.random.default_rng(seed)
    cx = rng.choice([150, 490])
    frame, box = face_frame(photo, face, cx, rng.uniform(170, 310), rng.uniform(100, 150),
                            background=int(rng.integers(60, 200)))
    room = (np.full(frame.shape[:2], float(frame[0, 0, 0])) if faceless else gray(frame)) * 0.2
    x, y, level = (20 if cx > 320 else 440), int(rng.uniform(20, 300)), rng.uniform(200, 255)
    if seed % 2:
        room[y:y + 100, x:x + 150] = level
    else:
        d = np.hypot(*np.mgrid[:480, :640][::-1] - np.array([x + 75, y + 75])[:, None, None])
        room = np.maximum(room, level * np.exp(-np.maximum(d - 30, 0) ** 2 / 800))
    return np.clip(room + rng.normal(0, 12, room.shape), 0, 255).astype(np.uint8), box


@pytest.mark.parametrize("photo, face", [(grace_hopper, HOPPER_FACE), (astronaut, ASTRONAUT_FACE)])
def test_mtcnn_finds_a_face_in_a_dim_room_with_a_window_or_lamp(mtcnn, photo, face):
    """The dim pass ran only in a frame dim as a whole, so a window or a lamp across the room made
    it not dim and the face was missed: 0 of 8 seeded frames of each photo by a full scan, 0-1
    around the known face. Dimness is now judged on each candidate's own box as well: measured on
    seeds 0-23, 4-6 of 8 by a full scan, 8 of 8 around the known face. The room without the
    face stays faceless."""
    from emovision.mtcnn import is_dim

    scans = around = 0
    for seed in range(8):
        room, box = dim_room_with_a_light(photo(), face, seed)
        assert not is_dim(room)
        boxes = mtcnn.detect(room)
        assert len(boxes) <= 1
        scans += len(boxes) == 1 and iou_matrix(boxes, np.array([box]))[0, 0] > 0.4
        boxes = mtcnn.detect(room, around=[box])
        assert len(boxes) <= 1
        around += len(boxes) == 1 and iou_matrix(boxes, np.array([box]))[0, 0] > 0.4
    assert scans >= 3 and around >= 6
    for seed in range(4):
        empty, _ = dim_room_with_a_light(photo(), face, seed, faceless=True)
        assert len(mtcnn.detect(empty)) == 0


@pytest.mark.parametrize("photo, face", [(grace_hopper, HOPPER_FACE), (astronaut, ASTRONAUT_FACE)])
def test_mtcnn_skips_the_dim_pass_on_a_lit_face_before_a_dark_bookshelf(mtcnn, photo, face, monkeypatch):
    """A lit face before a dark bookshelf (blocks of 20-60, a lit wall beside it): the shelf's
    P-Net candidates have nothing bright in their box, so the dim pass for a window or lamp refined
    30-40 of them again on every full scan once the face was found, for nothing (+7-9 ms a scan,
    59-61 fps instead of 64-66 on a 300-frame clip). It now runs there only when nothing was found."""
    refined = []
    refine = mtcnn._refine
    monkeypatch.setattr(mtcnn, "_refine", lambda *a, **k: refined.append(k.get("area", False)) or refine(*a, **k))
    for seed in range(2):
        rng = np.random.default_rng(seed)
        room = cv2.resize(rng.uniform(20, 60, (60, 80)), (640, 480), interpolation=cv2.INTER_NEAREST)
        room[:, 520:] = 180
        frame, box = face_frame(photo(), face, 320, 240, 90)
        x, y, w, h = (int(v) for v in box)
        room[y - h // 2:y + 3 * h // 2, x - w // 4:x + 5 * w // 4] = gray(frame)[y - h // 2:y + 3 * h // 2, x - w // 4:x + 5 * w // 4]
        boxes = mtcnn.detect(np.clip(room + rng.normal(0, 4, room.shape), 0, 255).astype(np.uint8))
        assert len(boxes) == 1 and iou_matrix(boxes, np.array([box]))[0, 0] > 0.4
    assert not any(refined)


def test_mtcnn_takes_no_texture_mirrored_at_the_frame_edge_for_a_face(mtcnn, monkeypatch):
    """Past the frame's edges MTCNN sees the frame mirrored (a face half outside is found whole),
    which makes textures there symmetric: without the check on boxes leaving the frame (O-Net
    again, the outside black) grass and stained cells each gave a box across the edge."""
    from skimage import data

    import emovision.mtcnn

    frames = []
    for img in (data.grass(), cv2.cvtColor(data.immunohistochemistry(), cv2.COLOR_RGB2GRAY)):
        corner = img[img.shape[0] * 2 // 5:, img.shape[1] * 2 // 5:]  # the bottom-right 3/5
        frames.append(cv2.resize(corner, (640, 480), interpolation=cv2.INTER_AREA))
    assert [len(mtcnn.detect(f)) for f in frames] == [0, 0]
    monkeypatch.setattr(emovision.mtcnn, "EDGE_CHECK", 0.0)
    assert [len(mtcnn.detect(f)) for f in frames] == [1, 1]


def test_detector_choice_errors():
    from emovision.faces import make_detector

    with pytest.raises(SourceError, match="--cascade is for the haar detector"):
        make_detector("mtcnn", cascade="x.xml")
    with pytest.raises(SourceError, match="unknown face detector 'yolo'"):
        make_detector("yolo")


def test_a_min_face_under_the_window_is_refused_before_mtcnn_loads():
    """make_detector built MTCNN (torch and its weights: 3.2 s, 850 MB) and only then refused
    --min-face 5; the CLI's refusal now takes 0.1 s. A fresh interpreter records every file
    opened: neither the weights nor torch are touched."""
    import subprocess
    import sys

    from tests.conftest import REPO

    script = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
from emovision.errors import ConfigError
from emovision.faces import make_detector
try:
    make_detector("mtcnn", min_face=5)
except ConfigError as err:
    print(err)
print([p for p in opened if "weights" in p or p.endswith(".pt")], "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["--min-face must be >= 12 px with --detector mtcnn (its smallest window; a smaller "
                                "face would need each image enlarged), got 5", "[] False"], out


def test_overlay_grows_with_the_frame_and_still_hides_no_face():
    """The labels and panel were drawn at 640x480's size on every frame, a third as large on a
    1080p one: they now scale with the frame's shorter side, 640x480 and smaller unchanged, and
    the panel still clears every face."""
    from emovision.faces import FaceResult, _label_box, panel_place, panel_size

    def sizes(h, w):
        s = h / 480
        face = FaceResult(1, [int(300 * s), int(150 * s), int(150 * s), int(150 * s)], "happy", 0.9, {"happy": 0.9})
        x0, y0, x1, y1, _ = _label_box(face, (h, w, 3))
        px, py, scale = panel_place((h, w, 3), [face], 7)
        pw, ph = panel_size(7, scale)
        assert iou_matrix(np.array([[px, py, pw, ph]]), np.array([face.box, [x0, y0, x1 - x0, y1 - y0]])).max() == 0
        return np.array([x1 - x0, y1 - y0, pw, ph])

    at_480 = sizes(480, 640)
    assert (at_480[2:] == PANEL_SIZE).all()
    small = FaceResult(1, [150, 75, 75, 75], "happy", 0.9, {"happy": 0.9})  # the label's text alone: never smaller
    x0, y0, x1, y1, _ = _label_box(small, (240, 320, 3))
    assert [x1 - x0, y1 - y0] == list(at_480[:2])
    for h, w in ((720, 1280), (1080, 1920)):
        assert np.allclose(sizes(h, w) / at_480, h / 480, rtol=0.1), (h, sizes(h, w), at_480)


def test_probability_panel_hides_no_face():
    from emovision.faces import FaceResult, FrameResult, draw, panel_origin

    def face(x, y, w):
        return FaceResult(1, [x, y, w, w], "happy", 0.9, {"happy": 0.9, "sad": 0.1})

    for boxes in ([(0, 0, 200)], [(0, 0, 200), (430, 0, 200)], [(10, 30, 150), (440, 250, 190), (10, 300, 160)]):
        faces = [face(*b) for b in boxes]
        x, y = panel_origin((480, 640, 3), faces)
        panel = np.array([[x, y, *PANEL_SIZE]])
        assert iou_matrix(panel, np.array([f.box for f in faces])).max() == 0, boxes
    frame = np.full((480, 640, 3), 200, np.uint8)
    faces = [face(0, 0, 200)]
    draw(frame, FrameResult(0, faces), ("happy", "sad"))
    assert (frame[5:195, 5:195] == 200).mean() > 0.9  # the face's pixels are still there, bar the label


def test_mtcnns_suppression_keeps_what_torchvisions_nms_keeps():
    """MTCNN's NMS is ours (importing torchvision for it cost every app start ~2 s): the same
    indices as torchvision.ops.nms on seeded boxes, with integer boxes (tied overlaps) and
    rounded scores (tied scores), at the thresholds MTCNN uses and one more."""
    import torch
    from torchvision.ops import nms

    from emovision.mtcnn import _nms

    rng = np.random.default_rng(0)
    for case in range(300):
        k = int(rng.integers(0, 300))
        xy, wh = rng.uniform(0, 600, (k, 2)), rng.uniform(1, 150, (k, 2))
        if case % 3 == 0:
            xy, wh = np.round(xy), np.round(wh)
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.uniform(0, 1, k).astype(np.float32)
        if case % 5 == 0:
            scores = np.round(scores, 1)
        for iou in (0.3, 0.5, 0.7):
            ours = _nms(boxes, scores, iou)
            assert np.array_equal(ours, nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()), (case, iou)


def test_the_apps_do_not_import_torchvision():
    """A fresh process that loads the app, predict, MTCNN and the classifier: torchvision (and
    torch's compiler, which its models import) stay out, ~2 s of every start."""
    import subprocess
    import sys

    code = ("import sys, emovision.webcam, emovision.predict, emovision.inference\n"
            "from emovision.faces import make_detector\n"
            "make_detector('mtcnn').detect(__import__('numpy').zeros((120, 160), 'uint8'))\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])

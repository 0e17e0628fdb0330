"""A face keeps its id through a short occlusion (issue 11): the real app on a real video."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from emovision.faces import UNCONFIRMED_MAX_MISSED, EmotionPipeline, FaceTracker, id_lifetime_rounds
from emovision.webcam import main as webcam_main
from tests.media import ASTRONAUT_FACE, HOPPER_FACE, astronaut, face_frame, grace_hopper

FPS = 30
SHOWN, COVERED = 10, 30  # frames of the face before and after the bar; frames under it (1 s)
EYES = (0.15, 0.5)  # the bar's rows, as fractions of the face box from its top: forehead to below the eyes


def test_a_face_covered_for_a_second_keeps_its_id_and_no_label_is_shown_meanwhile(tmp_path):
    """A grey bar over grace_hopper's eyes for 1 s (15 detection rounds at detect_every 2): the
    detector loses her. Before, her id lived 8 rounds (0.53 s at 30 fps) and she came back under
    a new one; now it lives ID_LIFETIME_S of video time. While covered nothing is shown."""
    video, log = tmp_path / "covered.mp4", tmp_path / "covered.jsonl"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    for i in range(2 * SHOWN + COVERED):
        frame, (x, y, w, h) = face_frame(grace_hopper(), HOPPER_FACE, 300 + i, 240, 140)  # drifting 1 px a frame
        if SHOWN <= i < SHOWN + COVERED:
            frame[int(y + EYES[0] * h):int(y + EYES[1] * h), int(x - 0.1 * w):int(x + 1.1 * w)] = 128
        writer.write(frame)
    writer.release()
    assert webcam_main(["--model", "pretrained", "--source", str(video), "--no-display", "--log", str(log),
                        "--device", "cpu"]) == 0
    ids = [[f["track_id"] for f in json.loads(line)["faces"]] for line in log.read_text().splitlines()]
    before, covered, after = ids[:SHOWN], ids[SHOWN + 2:SHOWN + COVERED], ids[SHOWN + COVERED + 2:]
    assert all(f == [] for f in covered), covered  # lost (the detector's next round on): no ghost label
    assert all(f == before[-1] for f in before[-1:] + after) and len(before[-1]) == 1, (before, after)


def test_the_id_lifetime_is_video_time():
    """2 s at the source's frame rate, whatever it is; a rate the source cannot give sanely is
    taken as 30 fps."""
    assert id_lifetime_rounds(30, 2) == 30 and id_lifetime_rounds(15, 2) == 15 and id_lifetime_rounds(60, 2) == 60
    assert id_lifetime_rounds(30, 3) == 20 and id_lifetime_rounds(None, 2) == id_lifetime_rounds(0.0, 2) == 30
    assert id_lifetime_rounds(90000.0, 2) == id_lifetime_rounds(float("nan"), 2) == 30
    assert EmotionPipeline(None, object(), 2, fps=15).tracker.max_missed == 15


def test_an_unconfirmed_box_is_not_kept_for_the_whole_id_lifetime():
    """A one-off box (a false face on the background, never shown) has no id to keep: it ends
    after UNCONFIRMED_MAX_MISSED rounds, as before the 2 s lifetime, while a confirmed face's id
    lives them all. Kept 2 s, it held a 640x480 feed on whole-frame scans every round."""
    tracker = FaceTracker(max_missed=id_lifetime_rounds(30, 2))
    tracker.update(np.array([[100, 100, 80, 80]]))  # a face, confirmed in the next round
    tracker.update(np.array([[100, 100, 80, 80], [400, 200, 60, 60]]))  # and a one-off box
    ids = [t.id for t in tracker.tracks]
    for _ in range(UNCONFIRMED_MAX_MISSED + 1):
        tracker.update(np.empty((0, 4)))
    assert [t.id for t in tracker.tracks] == ids[:1]  # the face's id lives on, the one-off box is gone


def _head(frame: np.ndarray, photo: np.ndarray, face: tuple, cx: float, cy: float, width: float) -> np.ndarray:
    """Paste the head around `face` (an ellipse over the face box and 0.7 of its side on each edge),
    scaled so the face box is `width` wide and centred at (cx, cy); returns where its pixels went."""
    fx, fy, fw, fh = face
    x0, y0 = int(max(0, fx - 0.7 * fw)), int(max(0, fy - 0.7 * fh))
    crop = photo[y0:int(fy + 1.7 * fh), x0:int(fx + 1.7 * fw)]
    s = width / fw
    img = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (img.shape[1] // 2, img.shape[0] // 2), (img.shape[1] // 2, img.shape[0] // 2), 0, 0, 360, 1, -1)
    x, y = int(round(cx - (fx - x0 + fw / 2) * s)), int(round(cy - (fy - y0 + fh / 2) * s))
    H, W = frame.shape[:2]
    a, b, c, d = max(0, x), max(0, y), min(W, x + img.shape[1]), min(H, y + img.shape[0])
    cover = np.zeros((H, W), bool)
    cover[b:d, a:c] = mask[b - y:d - y, a - x:c - x] > 0
    frame[cover] = img[b - y:d - y, a - x:c - x][cover[b:d, a:c]]
    return cover


@pytest.mark.parametrize("lift", [0.3, -1.1])
def test_a_face_passing_behind_another_keeps_its_id(tmp_path, lift):
    """Two people crossing: the astronaut walks in front of grace_hopper (7.5 px a frame each way,
    `lift` face sides apart in height). Hidden for ~20 frames, grace_hopper came back ~1.4 of her
    sides from where she was lost, beyond the place-and-size gate, and got a new id; her motion is
    now carried while she is behind a face. Neither face ever shows the other's id."""
    width, frames = 115, 60
    video, log = tmp_path / "cross.mp4", tmp_path / "cross.jsonl"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    truth = []
    for i in range(frames):
        t = i / (frames - 1)
        frame = np.full((480, 640, 3), 110, np.uint8)
        hopper = (100 + 440 * t, 240 - lift * width / 2)
        astro = (540 - 440 * t, 240 + lift * width / 2)
        _head(frame, grace_hopper(), HOPPER_FACE, *hopper, width)
        _head(frame, astronaut(), ASTRONAUT_FACE, *astro, width)
        truth.append({"hopper": hopper, "astro": astro})
        writer.write(frame)
    writer.release()
    assert webcam_main(["--model", "pretrained", "--source", str(video), "--no-display", "--log", str(log),
                        "--device", "cpu"]) == 0
    ids: dict[str, list[int]] = {"hopper": [], "astro": []}
    for line, where in zip(log.read_text().splitlines(), truth):
        for face in json.loads(line)["faces"]:
            x, y, w, h = face["box"]
            dist = {who: np.hypot(x + w / 2 - cx, y + h / 2 - cy) for who, (cx, cy) in where.items()}
            who = min(dist, key=dist.get)  # the face nearer the box's centre (the one in front, where they meet)
            if dist[who] < width / 2:
                ids[who].append(face["track_id"])
    assert len(ids["hopper"]) > frames / 2 and len(ids["astro"]) > frames / 2, ids  # both seen, most of the time
    assert len(set(ids["hopper"])) == 1 and len(set(ids["astro"])) == 1, ids  # one id each (before: two for her)
    assert set(ids["hopper"]) != set(ids["astro"]), ids  # no swap


def test_a_lost_face_keeps_its_motion_only_while_another_face_could_hide_it():
    """Face A moves right 8 px a frame (a round every 2 frames) and is lost for 9 rounds, then found
    1.6 of its sides on along its path. Lost beside B, coming the other way, it was behind B: its
    motion is carried and it keeps its id; a face appearing elsewhere meanwhile is someone else.
    Lost with no face near (it turned away, left the room), its motion decays as before and the
    box 1.6 sides on is a new face."""
    def ids(with_b: bool, elsewhere: bool = False) -> tuple[int, dict[float, int]]:
        """A's first id, and the id of each face found in the last round by its box's x."""
        tracker = FaceTracker(max_missed=30)
        for r in range(14):
            a = [[100 + 16 * r, 200, 100, 100]] if r < 4 or r == 13 else []
            b = [[400 - 16 * r, 230, 100, 100]] if with_b else []
            other = [[120, 360, 100, 100]] if elsewhere and r >= 10 else []
            if r:
                tracker.advance(2)
            tracker.update(np.array(a + b + other).reshape(-1, 4))
            if r == 0:
                first = tracker.tracks[0].id
        return first, {float(t.raw[0]): t.id for t in tracker.tracks if t.missed == 0}

    first, found = ids(with_b=True)
    assert found[308] == first  # behind B: the same face
    first, found = ids(with_b=False)
    assert found[308] != first  # hidden by no face: a new one, as before
    first, found = ids(with_b=True, elsewhere=True)
    assert found[308] == first and found[120] != first


def test_a_fast_face_turning_round_keeps_its_id():
    """grace_hopper (120 px) bouncing round a 640x480 frame at 50 px a frame (0.8 of her side a
    detection round): where she turned round, the next round found her neither where her motion
    led nor within 0.75 of her side of where she was, and she got a new id: 9 ids and 61 of 90
    frames found on this seed (8-10 ids, 58-63 frames on seeds 0-5). A face found in the last round
    is now the same face anywhere it could have got to at its speed: 1 id and 78 frames here (1-4
    ids, 69-81 frames on seeds 0-5; 1 id on 4 of them, 78-81 frames)."""
    from emovision.faces import make_detector
    from emovision.inference import load_classifier
    from tests.test_faces import bouncing_face, track_figures

    pipeline = EmotionPipeline(load_classifier("pretrained", "cpu"), make_detector("mtcnn"))
    found, ids, off = track_figures(pipeline, bouncing_face(grace_hopper(), HOPPER_FACE, 120, 50, seed=2))
    assert len(ids) == 1 and found >= 70, (found, ids, off)



def test_a_face_turning_round_beside_another_keeps_its_own_box():
    """Two 90 px faces walking together, one 95 px below and 30 px ahead of the other (25 px a
    frame, a round every 2 frames), turn round at once (a couple turning, a camera pan reversing):
    each is found 70 px back from where it was, beyond CENTRE_GATE, so only within its reach, and
    the other's box is within the first one's reach too (103 px). The first face took the first
    box in the detector's order, the other's: its id went onto the other person, who got a new
    one. Now the nearest box within reach is its own."""
    tracker = FaceTracker(max_missed=30)
    for r, x in enumerate([100, 150, 200, 250, 180]):  # the first face's centre x each round; turned in the last
        a, b = [x - 45, 155, 90, 90], [x + 30 - 45, 155 + 95, 90, 90]
        if r:
            tracker.advance(2)
        tracker.update(np.array([a, b] if r == 0 else [b, a]))  # the first face gets the older id; later
        if r == 0:                                               # the detector gives the other first
            first = [t.id for t in tracker.tracks]
    now = [(round(t.raw[0]), t.id) for t in tracker.tracks if t.missed == 0]
    assert sorted(now) == [(135, first[0]), (165, first[1])], (now, first)

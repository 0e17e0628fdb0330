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
FAINT = 0.1  # how much of the face a fading-in frame shows over the room (her descriptor: 0.19-0.56 on seeds 0-5)


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


@pytest.mark.parametrize("seed", range(4))
def test_a_newcomer_within_a_fast_faces_reach_does_not_take_its_id(seed):
    """grace_hopper crosses a room at 25 px a frame (50 px a detection round) and vanishes (she turned
    away); in that round the astronaut is found 120 px beside where she was, off her path: not where
    her motion leads, but within her reach (her speed plus 0.75 of her side: 140 px), where a fast
    face that turned round would be. He took her id; a box only within reach must now look like her,
    so he gets a new one. Swept over seeds 0-3, speeds 20-30 px a frame and newcomers 100 / 120 /
    140 px away in any direction: he took her id in 88/88, 81/81, 40/76 cases, now 30, 13, 2 (those
    left are where her motion leads, within the gate, matched by place as before)."""
    room = _room(seed, False)
    rng = np.random.default_rng(seed)
    y, side = rng.uniform(150, 330), rng.choice([-1, 1])
    path = [_sitting("hopper", room, 150 + 50 * r, y, 120) for r in range(6)]
    newcomer = _sitting("astronaut", room, 400, y + side * 120, 120)
    tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
    found = _rounds(tracker, [(f, [b]) for f, b in path] + [(newcomer[0], [newcomer[1]])] * 3)
    first = found[0][0]
    assert all(ids == [first] for ids in found[:6]), found  # her own track through the crossing
    assert [t.id for t in tracker.active()] not in ([], [first]), found


def _rounds(tracker: FaceTracker, frames: list[tuple[np.ndarray, list]]) -> list[list[int]]:
    """Feed detection rounds (a frame, its face boxes) two frames apart; the ids found in each."""
    found = []
    for frame, boxes in frames:
        tracker.advance(2)
        tracker.update(np.array(boxes, float).reshape(-1, 4), gray=cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        found.append([t.id for t in tracker.tracks if t.missed == 0])
    return found


def _room(seed: int, gray: bool) -> np.ndarray:
    """A still textured room (scikit-image's brick wall, 640x480), in colour or grey levels."""
    from skimage import data

    wall = cv2.resize(data.brick(), (640, 480), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(np.roll(wall, 37 * seed, axis=1), cv2.COLOR_GRAY2BGR)


def _sitting(who: str, room: np.ndarray, cx: float, cy: float, width: float, gain: float = 1.0,
             gray: bool = False) -> tuple[np.ndarray, list[float]]:
    """`room` with grace_hopper's or the astronaut's head, face box `width` wide centred at (cx, cy),
    levels times `gain` (a light switched off), optionally as a grey source; and the face box."""
    photo, face = (grace_hopper(), HOPPER_FACE) if who == "hopper" else (astronaut(), ASTRONAUT_FACE)
    frame = room.copy()
    _head(frame, photo, face, cx, cy, width)
    frame = np.clip(frame * gain, 0, 255).astype(np.uint8)
    if gray:
        frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return frame, [cx - width / 2, cy - width / 2, width, width]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gray", [False, True])
def test_another_person_at_a_lost_faces_place_gets_a_new_id_and_the_same_one_keeps_hers(seed, gray):
    """Issue 11: grace_hopper sits in a still room for 6 rounds, leaves, and 1 s later (15 rounds,
    within ID_LIFETIME_S) someone sits down at her place and size, the detector's box a few pixels
    off. The astronaut took her id (by IoU with her last box); now a lost face takes a box only if
    it looks like her. grace_hopper herself coming back, with the light switched off (x0.5), keeps
    it. In colour and as a grey source (the check reads grey levels only)."""
    rng = np.random.default_rng(seed)
    room = _room(seed, gray)
    width = rng.uniform(100, 150)
    cx, cy = rng.uniform(width, 640 - width), rng.uniform(width, 480 - width)
    jitter = rng.uniform(-0.04, 0.04, (4, 2)) * width
    empty = [(room, [])] * 15
    ids = {}
    for back, gain in (("astronaut", 1.0), ("hopper", 0.5)):
        tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
        before = [_sitting("hopper", room, cx + dx, cy + dy, width, gray=gray) for dx, dy in jitter[:2]] * 3
        after = [_sitting(back, room, cx + dx, cy + dy, width, gain, gray) for dx, dy in jitter[2:]]
        found = _rounds(tracker, [(f, [b]) for f, b in before] + empty + [(f, [b]) for f, b in after])
        assert found[len(before)] == [] and len(found[-1]) == 1, found
        ids[back] = (found[0][0], found[-1][0])
    first, later = ids["astronaut"]
    assert later != first, ids  # someone else: a new id
    first, later = ids["hopper"]
    assert later == first, ids  # the same person, lights off: hers


@pytest.mark.parametrize("seed", range(4))
def test_a_face_fading_back_in_keeps_its_id_though_its_first_box_looks_like_the_room(seed):
    """grace_hopper leaves for 1 s and comes back into the light: in her first round back she is a
    tenth of herself over the brick wall, which her descriptor does not match, so that box starts a
    new track; in the next round she is herself, and the track, confirmed now, takes her old id
    before it is ever shown."""
    rng = np.random.default_rng(seed)
    room = _room(seed, False)
    width = rng.uniform(100, 150)
    cx, cy = rng.uniform(width, 640 - width), rng.uniform(width, 480 - width)
    face, box = _sitting("hopper", room, cx, cy, width)
    faint = np.clip(room * (1 - FAINT) + face * FAINT, 0, 255).astype(np.uint8)
    tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
    found = _rounds(tracker, [(face, [box])] * 6 + [(room, [])] * 15 + [(faint, [box]), (face, [box]), (face, [box])])
    first = found[0][0]
    assert found[-3] != [first], found  # the faint box: not taken by her lost track (else this tests nothing)
    assert [t.id for t in tracker.active()] == [first], found  # shown, under her id


def _place(seed: int) -> tuple[np.ndarray, float, float, float]:
    """A seeded room and a face place in it: (room, centre x, centre y, face box width)."""
    rng = np.random.default_rng(seed)
    width = rng.uniform(100, 150)
    return _room(seed, False), rng.uniform(width, 640 - width), rng.uniform(width, 480 - width), width


@pytest.mark.parametrize("seed", range(4))
def test_a_face_fading_in_at_a_lost_faces_place_is_named_only_once_it_looks_like_itself(seed):
    """grace_hopper leaves for 1 s; then someone fades in at her place over four rounds (a tenth,
    a third, two thirds of themselves over the room, then whole), the detector boxing them from
    the first. Her first faint rounds look like neither person, so deciding there gave grace_hopper
    a second id (issue 11, same-1.5s) or, by place alone, the astronaut hers. The newcomer is held,
    not shown, until its look settles: the astronaut then gets a new id, grace_hopper her own, and
    no round shows anyone under an id that is not theirs."""
    room, cx, cy, width = _place(seed)
    shown = {}
    for who in ("astronaut", "hopper"):
        tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
        face, box = _sitting("hopper", room, cx, cy, width)
        found = _rounds(tracker, [(face, [box])] * 6 + [(room, [])] * 15)
        first = found[0][0]
        face, box = _sitting(who, room, cx, cy, width)
        ids = []
        for alpha in (0.1, 0.33, 0.67, 1.0, 1.0, 1.0, 1.0):
            fading = np.clip(room * (1 - alpha) + face * alpha, 0, 255).astype(np.uint8)
            _rounds(tracker, [(fading, [box])])
            ids.append([t.id for t in tracker.active()])
        shown[who] = (first, ids)
    first, ids = shown["astronaut"]
    assert ids[-1] and ids[-1] != [first] and all(first not in i for i in ids), shown
    first, ids = shown["hopper"]
    assert all(i in ([], [first]) for i in ids) and ids[-1] == [first], shown


@pytest.mark.parametrize("seed", range(4))
def test_a_face_sliding_out_of_the_frame_and_back_keeps_its_id_and_another_entering_there_does_not_take_it(seed):
    """grace_hopper slides down until 70% of her face is below the frame (20 px a round) and back;
    the detector loses her past half out, and boxes her again on the way back while half of her is
    still outside, mirrored as the detector sees it: that box does not look like her yet, so it is
    held until she is inside the frame, then takes her id. The astronaut coming up at that edge
    instead (the same boxes) gets a new id, as he did not by place alone."""
    room, cx, _, width = _place(seed)
    bottom = 480 - width / 2  # the face box's centre where it touches the bottom edge
    path = [bottom - 60 + 20 * k for k in range(10)]  # down to 0.7 out and back (by 20 px a round)
    path = path + path[::-1]
    out = [(cy - bottom) / width + 0.5 for cy in path]  # fraction of the face box below the frame
    shown = {}
    for back in ("astronaut", "hopper"):
        tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
        rounds = []
        for k, (cy, o) in enumerate(zip(path, out)):
            who = "hopper" if k < len(path) // 2 else back
            frame, box = _sitting(who, room, cx, cy, width)
            rounds.append((frame, [box] if o <= 0.5 else []))
        found = _rounds(tracker, rounds + [rounds[-1]] * 3)
        shown[back] = (found[0][0], [t.id for t in tracker.active()])
    first, last = shown["astronaut"]
    assert last and last != [first], shown
    first, last = shown["hopper"]
    assert last == [first], shown


@pytest.mark.parametrize("seed", range(4))
def test_a_head_turning_away_and_back_keeps_its_id(seed):
    """grace_hopper turns her head quickly (a 6-frame turn to 80 degrees and back, as the real app saw
    it): one round the detector misses her, the next it boxes her half-turned head, half as wide, which
    does not look like her, the next her face again. The half-turned box started a plain new track
    (it is not within the size gate of her lost one, only overlapping it), which then took her face
    back from her lost track by overlap: a new id in the real app (head-turn clips, seed 1). A box
    overlapping a lost face is now held like one within its gate, and takes her id when she is back."""
    room, cx, cy, width = _place(seed)
    photo, face = grace_hopper(), HOPPER_FACE
    frontal, box = _sitting("hopper", room, cx, cy, width)
    turned = room.copy()
    half = cv2.resize(photo, None, fx=0.5, fy=1.0, interpolation=cv2.INTER_AREA)
    _head(turned, half, (face[0] / 2, face[1], face[2] / 2, face[3]), cx, cy, width / 2)
    turned_box = [cx - 0.15 * width, cy - 0.3 * width, 0.5 * width, 0.66 * width]  # as MTCNN boxed it: IoU 0.33
    tracker = FaceTracker(max_missed=id_lifetime_rounds(FPS, 2))
    found = _rounds(tracker, [(frontal, [box])] * 6 + [(room, [])] + [(turned, [turned_box])])
    first = found[0][0]
    assert first not in found[-1], found  # her lost track refused the turned box (else this tests nothing)
    assert tracker.active() == [], found  # nothing shown while it is undecided
    _rounds(tracker, [(frontal, [box])] * 2)
    assert [t.id for t in tracker.active()] == [first]

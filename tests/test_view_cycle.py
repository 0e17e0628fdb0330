"""Test-time views (`framing.VIEW_CYCLE`): a tracked face is classified at one side a frame, in
turn; a still (and --smooth 0) at every side, averaged. Real photo pixels, the real pipeline and
detector, the shipped classifier, wrapped only to note the crops it is given."""
from __future__ import annotations

import numpy as np
import pytest

from emovision.faces import EmotionPipeline, analyze_still, classify_boxes, landmark_angles, make_detector, to_gray
from emovision.framing import VIEW_CYCLE, fer_square
from tests.media import HOPPER_FACE, face_frame, grace_hopper


class Noting:
    """The real classifier, answering as it does, noting each call's crop sides and tta."""

    def __init__(self, classifier):
        self.classifier, self.calls = classifier, []

    def __getattr__(self, name):
        return getattr(self.classifier, name)

    def predict_proba(self, faces, tta=None, **kw):
        self.calls.append(([face.shape[0] for face in faces], tta))
        return self.classifier.predict_proba(faces, tta=tta, **kw)


@pytest.fixture(scope="module")
def shipped():
    from emovision.inference import load_classifier

    return load_classifier("pretrained", "cpu")


@pytest.fixture(scope="module")
def detector():
    return make_detector()


def hopper_frame() -> np.ndarray:
    return face_frame(grace_hopper(), HOPPER_FACE, 320, 240, 150)[0]


def sides(calls) -> list[list[int]]:
    return [s for s, _ in calls]


@pytest.mark.parametrize("tta", [None, False])
def test_a_tracked_face_alternates_its_crop_side_frame_to_frame(shipped, detector, tta):
    """A still face in a video, detect_every 3 (first shown on frame 3, odd): one crop a frame,
    its side x1, x0.94, x1, ... from the face's first shown frame (counted per face, not by the
    frame index); --no-tta turns off the mirror only, not the cycle."""
    clf = Noting(shipped)
    pipeline = EmotionPipeline(clf, detector, detect_every=3, tta=tta)
    shown = [len(pipeline.process(hopper_frame()).faces) for _ in range(9)]
    assert shown == [0, 0, 0] + [1] * 6
    got = sides(clf.calls)
    assert all(len(s) == 1 for s in got) and {t for _, t in clf.calls} == {tta}
    # frames 3-5 share round 3's box, frames 6-8 round 6's (re-found around it: a few px apart)
    first, second = [s[0] for s in got[:3]], [s[0] for s in got[3:]]
    assert first[0] == first[2] and first[1] == pytest.approx(first[0] * VIEW_CYCLE[1], abs=1)
    assert second[0] == second[2] and second[0] == pytest.approx(second[1] * VIEW_CYCLE[1], abs=1)
    assert first[1] < first[0] - 4  # x0.94 of a ~130 px square: 8 px smaller


def test_the_ema_averages_the_two_views(shipped, detector):
    """What the app shows on a still face's second frame is the EMA of its two views' probabilities."""
    clf = Noting(shipped)
    pipeline = EmotionPipeline(clf, detector)
    results = [pipeline.process(hopper_frame()) for _ in range(4)]
    (track,) = pipeline.tracker.active()  # a still face: the same box and tilt on frames 2 and 3
    big, small = (classify_boxes(shipped, to_gray(hopper_frame()), [track.box], detector.framing, None, [track.angle],
                                 [v])[0] for v in VIEW_CYCLE)
    ema = pipeline.tracker.smooth * big + (1 - pipeline.tracker.smooth) * small
    shown = results[3].faces[0].probs
    np.testing.assert_allclose([shown[c] for c in shipped.classes], ema, atol=2e-4)
    assert np.abs(big - small).max() > 1e-3  # the two views differ


@pytest.mark.parametrize("tta", [None, False])
def test_a_still_averages_both_views_in_one_batch(shipped, detector, tta):
    """analyze_still (predict, --source FOLDER, the serving API) cuts each face at every view in
    one batch and shows their mean; the stills pipeline gives the same."""
    clf = Noting(shipped)
    image = hopper_frame()
    (face,) = analyze_still(clf, image, detector, tta=tta)
    (call,) = clf.calls
    assert len(call[0]) == 2 and call[0][1] == pytest.approx(call[0][0] * VIEW_CYCLE[1], abs=1) and call[1] == tta
    gray = to_gray(image)
    boxes = detector.detect(gray)
    angles = landmark_angles(detector, len(boxes))
    views = [classify_boxes(shipped, gray, boxes, detector.framing, tta, angles, [v])[0] for v in VIEW_CYCLE]
    np.testing.assert_allclose([face["probs"][c] for c in shipped.classes], np.mean(views, 0), atol=1e-4)
    assert np.abs(views[0] - views[1]).max() > 1e-3
    (still,) = EmotionPipeline(shipped, detector, tta=tta, stills=True).process(image).faces
    assert still.probs == face["probs"]


def test_smooth_0_averages_both_views_every_frame(shipped, detector):
    """--smooth 0 (nothing carried over frames): every frame classifies both views of each face and
    shows their mean, as a still does."""
    clf = Noting(shipped)
    pipeline = EmotionPipeline(clf, detector, smooth=0.0)
    faces = [pipeline.process(hopper_frame()).faces for _ in range(5)]
    assert [len(s) for s in sides(clf.calls)] == [2, 2, 2]  # frames 2-4, one face each
    (track,) = pipeline.tracker.active()
    views = [classify_boxes(shipped, to_gray(hopper_frame()), [track.box], detector.framing, None, [track.angle],
                            [v])[0] for v in VIEW_CYCLE]
    np.testing.assert_allclose([faces[-1][0].probs[c] for c in shipped.classes], np.mean(views, 0), atol=1e-4)


def test_a_face_whose_average_restarts_begins_the_cycle_again_at_x1(shipped, detector):
    """A face hidden for more than one round (a hand over it) comes back under its id with its EMA
    started afresh (tracker: probs None); its views must start again at x1, as a new face's do, not
    go on from where the cycle stood when it was hidden (x0.94 after an odd number of frames)."""
    face, box = face_frame(grace_hopper(), HOPPER_FACE, 320, 240, 150)
    covered = face.copy()
    x, y, w, h = (int(round(v)) for v in box)
    covered[y - 100:y + h + 10, x - 40:x + w + 40] = 128  # a flat hand over the face and hair (no box on its edge)
    clf = Noting(shipped)
    pipeline = EmotionPipeline(clf, detector, detect_every=1)
    before = [pipeline.process(face) for _ in range(4)]  # shown from frame 1: 3 frames, x1, x0.94, x1
    hidden = [pipeline.process(covered) for _ in range(3)]
    after = [pipeline.process(face) for _ in range(3)]
    assert [len(r.faces) for r in before + hidden + after] == [0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    (before_id,), (after_id,) = {f.track_id for r in before for f in r.faces}, {f.track_id for r in after for f in r.faces}
    assert after_id == before_id and not any(r.cut for r in hidden + after)
    # one crop a frame (3 before the hand, 3 after it); its side over the x1 square's side of that
    # frame's box (detect_every 1: each frame its own box) is the view it was cut at
    shown = [f.box for r in before + after for f in r.faces]
    got = [s[0] / fer_square(box, detector.framing)[2] for (s, _), box in zip(clf.calls, shown)]
    assert len(got) == len(shown) == 6
    assert got == pytest.approx([1.0, VIEW_CYCLE[1], 1.0, 1.0, VIEW_CYCLE[1], 1.0], abs=0.02)

"""Images a user hands us: one level rule (`emovision.levels`) and one reader
(`emovision.images`) at every entry: image files, the predict CLI, whole images and face
crops as arrays, and the serving API; with grace_hopper and the shipped model."""
from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from emovision.faces import analyze_still, make_detector
from emovision.images import read_image
from emovision.inference import load_classifier
from emovision.predict import main as predict_main
from emovision.serving import predict_table
from emovision.sources import open_source
from tests.media import HOPPER_FACE, grace_hopper

# grace_hopper at every depth a user may hand it over in: 8-bit levels, the full 16-bit range
# (257 * v, as a 16-bit PNG or TIFF holds an 8-bit photo), and floats 0..1
DEPTHS = {
    "uint8": lambda img: img,
    "uint16": lambda img: img.astype(np.uint16) * 257,
    "float32": lambda img: img.astype(np.float32) / 255,
    "float64": lambda img: img / 255.0,
}
FILES = [("png", "uint8"), ("png", "uint16"), ("tif", "uint16"), ("tif", "float32")]


@pytest.fixture(scope="module")
def shipped():
    return load_classifier("pretrained", "cpu")


def test_every_depth_of_a_file_reads_and_predicts_as_the_8_bit_photo(tmp_path, capsys):
    """A float TIFF of 0..1 was refused as unreadable (and a float EXR read near-black):
    16-bit and float files now decode at their depth and reach the same uint8 photo."""
    hopper = grace_hopper()
    paths = []
    for ext, depth in FILES:
        path = tmp_path / f"hopper-{depth}.{ext}"
        assert cv2.imwrite(str(path), DEPTHS[depth](hopper))
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == depth  # OpenCV wrote that depth
        image = read_image(path)
        assert not isinstance(image, str), f"{path.name}: {image}"
        np.testing.assert_array_equal(image, hopper)
        paths.append(path)
    assert predict_main(["--model", "pretrained", "--device", "cpu", *map(str, paths)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.pop("image") for r in records] == list(map(str, paths))  # one face each
    assert all(r == records[0] for r in records)


def test_every_depth_of_an_array_predicts_as_uint8(shipped):
    """Float crops of 0..1 were cast to levels 0 and 1 (a black face) and uint16 refused: by
    the one rule, grace_hopper as a whole image (`analyze_still`) and as a face crop
    (`predict_proba`) gives the uint8 answer at every depth."""
    hopper, detector = grace_hopper(), make_detector()
    x, y, w, h = HOPPER_FACE
    crop = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)[y:y + h, x:x + w]
    want_faces = analyze_still(shipped, hopper, detector)
    want_probs = shipped.predict_proba([crop])
    assert len(want_faces) == 1
    for depth, convert in DEPTHS.items():
        assert analyze_still(shipped, convert(hopper), detector) == want_faces, depth
        np.testing.assert_array_equal(shipped.predict_proba([convert(crop)]), want_probs, err_msg=depth)
        np.testing.assert_array_equal(shipped.predict_proba(convert(crop)[None]), want_probs, err_msg=depth)


def test_the_serving_api_reads_levels_by_the_same_rule(shipped):
    """A float crop of 0..1 in a request was cast to black; a 16-bit PNG image decodes as its
    8-bit self."""
    hopper = grace_hopper()
    x, y, w, h = HOPPER_FACE
    crop = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)[y:y + h, x:x + w]
    images = [base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode()
              for img in (hopper, DEPTHS["uint16"](hopper))]
    table = pd.DataFrame({"crop": [crop.tolist(), (crop / 255).tolist(), None, None],
                          "image": [None, None, *images]})
    out = predict_table(shipped, table, make_detector())
    probs = out[list(shipped.classes)].to_numpy()
    assert list(out["input"]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(probs[0], probs[1])
    np.testing.assert_array_equal(probs[2], probs[3])
    assert out["box"][2] == out["box"][3]


def test_a_single_image_source_is_decoded_once(tmp_path):
    """`--source photo.png` decoded the photo to refuse a bad one before the model loads, then
    again to use it: the first decode is now the one used, and the file is not read again."""
    path = tmp_path / "hopper.png"
    cv2.imwrite(str(path), grace_hopper())
    with open_source(str(path)) as source:
        path.write_bytes(b"")  # what a second read would find
        frames = list(source)
    assert len(frames) == 1 and not source.skipped
    np.testing.assert_array_equal(frames[0][2], grace_hopper())

"""Images a user hands us: one level rule (`emovision.levels`) and one reader
(`emovision.images`) at every entry: image files, the predict CLI, whole images and face
crops as arrays, and the serving API; with grace_hopper and the shipped model."""
from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emovision.faces import analyze_still, iou_matrix, make_detector
from emovision.images import content_kind, decode_image, read_image
from emovision.inference import load_classifier
from emovision.predict import main as predict_main
from emovision.serving import predict_table
from emovision.sources import open_source
from emovision.webcam import main as webcam_main
from tests.conftest import REPO
from tests.media import HOPPER_FACE, grace_hopper
from tests.test_webcam import one_error_line

# grace_hopper at every depth a user may hand it over in: 8-bit levels, the full 16-bit range
# (257 * v, as a 16-bit PNG or TIFF holds an 8-bit photo), and floats 0..1
DEPTHS = {
    "uint8": lambda img: img,
    "uint16": lambda img: img.astype(np.uint16) * 257,
    "float32": lambda img: img.astype(np.float32) / 255,
    "float64": lambda img: img / 255.0,
}
FILES = [("png", "uint8"), ("png", "uint16"), ("tif", "uint16"), ("tif", "float32")]
EXIF_ORIENTATION = 0x0112


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


def _png_claiming(width: int, height: int) -> bytes:
    """An 8x8 PNG whose header claims width x height (a decompression bomb's header)."""
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _exr_of_hopper(tmp_path) -> bytes:
    """grace_hopper / 255 as a float EXR, written (and read back by `read_image`) in a process
    with OpenCV's EXR codec on: a process decides that once, at its first EXR."""
    script = ("import sys, cv2, numpy as np; from emovision.images import read_image; "
              "from tests.media import grace_hopper; h = grace_hopper(); "
              "assert cv2.imwrite(sys.argv[1], h.astype(np.float32) / 255); "
              "assert (read_image(sys.argv[1]) == h).all()")
    path = tmp_path / "hopper.exr"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO), "OPENCV_IO_ENABLE_OPENEXR": "1"})
    return path.read_bytes()


def _cr3_head() -> bytes:
    """How a Canon CR3 begins: an ISO base media `ftyp` box of brand "crx ", then `moov` with
    Canon's own uuid box (the raw image data follows in `mdat`)."""
    ftyp = b"ftyp" + b"crx " + struct.pack(">I", 1) + b"crx isom"
    uuid = b"uuid" + bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")
    return (struct.pack(">I", 8 + len(ftyp)) + ftyp + struct.pack(">I", 16 + len(uuid)) + b"moov"
            + struct.pack(">I", 8 + len(uuid)) + uuid + bytes(256))


UNUSABLE = [  # (file name, its bytes, what the one line says)
    ("notes.jpg", lambda tmp: b"a text file, renamed", "unreadable image file"),
    ("empty.png", lambda tmp: b"", "empty file"),
    ("photo.heic", lambda tmp: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
     "a HEIC/HEIF image, which OpenCV cannot decode: convert it to JPEG or PNG"),
    # a CR3 was "a video" to predict and a broken video to the app
    ("IMG_0001.CR3", lambda tmp: _cr3_head(),
     "a Canon CR3 camera raw file, which OpenCV cannot decode: convert it to JPEG or PNG"),
    ("bomb.png", lambda tmp: _png_claiming(100_000, 100_000),
     "image too large for OpenCV to decode (CV_IO_MAX_IMAGE_PIXELS: 2**30 pixels by default)"),
    ("hdr.tif", lambda tmp: cv2.imencode(".tif", np.full((8, 8, 3), 4.0, np.float32))[1].tobytes(),
     "float pixels must be 0..1, got float32 values in [4, 4]"),
    ("hopper.exr", _exr_of_hopper, "an OpenEXR image, which OpenCV reads only with OPENCV_IO_ENABLE_OPENEXR=1"),
]


@pytest.mark.parametrize("app", ["predict", "webcam"])
@pytest.mark.parametrize("name, content, message", UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_an_unusable_image_is_one_line_before_the_model_loads(tmp_path, capsys, app, name, content, message):
    """A HEIC went to the video reader (FFmpeg's 'moov atom not found', then 'cannot open
    video'); an EXR, or a header claiming 10**10 pixels, raised OpenCV's traceback; a float
    TIFF printed libtiff's warning. Each is now one line naming the file and what it is,
    exit 2, before the model loads (the model 'nope.pt' would fail next) and nothing written.
    (A float EXR of 0..1 reads as its 8-bit photo where the codec is on: `_exr_of_hopper`.)"""
    if name.endswith(".exr") and os.environ.get("OPENCV_IO_ENABLE_OPENEXR"):
        pytest.skip("OpenEXR is on in this environment")
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    out = tmp_path / "out.mp4"
    if app == "predict":
        assert predict_main(["--model", "nope.pt", str(path)]) == 2
    else:
        assert webcam_main(["--model", "nope.pt", "--no-display", "--source", str(path), "--output", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    one_error_line(captured.err, f"error: cannot read image {path}: {message}")


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_a_cut_off_png_or_tiff_is_one_line_on_the_terminal_too(tmp_path, capfd, ext):
    """A PNG cut off in a download made libpng print `libpng error: PNG input buffer is incomplete`
    and a cut TIFF OpenCV's four lines of libtiff errors, both on the terminal before our line (written
    to the file descriptor: capsys does not see them). A PNG is now found cut by its chunks, and OpenCV
    is quiet while it decodes."""
    ok, data = cv2.imencode(f".{ext}", grace_hopper())
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data.tobytes()[:len(data) // 2])
    assert predict_main(["--model", "nope.pt", str(path)]) == 2
    captured = capfd.readouterr()
    reason = "truncated PNG (its data ends before its IEND chunk)" if ext == "png" else "unreadable image file"
    assert captured.out == ""
    one_error_line(captured.err, f"error: cannot read image {path}: {reason}")


def test_a_phone_photo_with_data_after_its_image_is_read(tmp_path):
    """Motion photos (Samsung, Pixel) carry their video after the JPEG's end-of-image marker;
    a JPEG was called truncated when FFDA followed the file's last FFD9, which a video's bytes
    do about half the time: such photos were refused, and skipped in folders. The JPEG is now
    walked to its own end; a cut-off JPEG is still refused, by its bytes whatever its name,
    also as the serving API's base64."""
    whole = cv2.imencode(".jpg", grace_hopper())[1].tobytes()
    video = np.random.default_rng(0).bytes(1 << 18)  # compressed video: bytes at random
    assert video.rfind(b"\xff\xda") > video.rfind(b"\xff\xd9")  # where the old rule looked
    motion = tmp_path / "motion.jpg"
    motion.write_bytes(whole + b"MotionPhoto_Data" + video)
    image = read_image(motion)
    assert not isinstance(image, str), image
    np.testing.assert_array_equal(image, decode_image(whole))
    cut = whole[: len(whole) // 2]
    truncated = "truncated JPEG (no end-of-image marker after the image data)"
    for name in ("cut.jfif", "cut"):
        (tmp_path / name).write_bytes(cut)
        assert read_image(tmp_path / name) == truncated
    assert decode_image(cut) == truncated


def test_a_photo_is_a_still_whatever_its_name_and_hidden_files_are_not_photos(tmp_path, capsys):
    """The app chose stills by extension: a JPEG saved by a browser as .jfif, or as .jpe, was
    passed over in a folder without a word, and given as the source went to the video reader,
    where a face must be confirmed over frames that never come (none found). macOS's ._NAME.jpg
    metadata beside each photo copied to a USB stick was a 'broken image' (warning, exit 1).
    Photos are now recognised by their first bytes; hidden files are ignored, as prepare does."""
    jpeg = cv2.imencode(".jpg", grace_hopper())[1].tobytes()
    folder = tmp_path / "phone"
    folder.mkdir()
    for name in ("a.jfif", "b.jpe", "c"):
        (folder / name).write_bytes(jpeg)
    (folder / "._a.jfif").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")  # AppleDouble
    (folder / "notes.txt").write_text("not a photo")
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(folder), "--log", str(log)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [len(json.loads(line)["faces"]) for line in log.read_text().splitlines()] == [1, 1, 1]
    named_as_video = tmp_path / "photo.mp4"
    named_as_video.write_bytes(jpeg)
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(named_as_video),
                        "--log", str(log)]) == 0
    assert [len(json.loads(line)["faces"]) for line in log.read_text().splitlines()] == [1]
    # and the other way round: a video named .jpg was refused as an unreadable image; it plays, and
    # predict, which reads images, names a video as one rather than 'unreadable'
    video = tmp_path / "clip.jpg"
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    (tmp_path / "clip.mp4").rename(video)
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(video), "--log", str(log)]) == 0
    assert len(log.read_text().splitlines()) == 3
    capsys.readouterr()
    assert predict_main(["--model", "pretrained", str(video)]) == 2
    one_error_line(capsys.readouterr().err, f"error: cannot read image {video}: a video, not an image "
                                            f"(python -m emovision.webcam --source VIDEO reads videos)")


def test_a_cameras_raw_file_and_a_text_file_are_not_photos(tmp_path):
    """Photos recognised by their first bytes took more than photos: camera raw files (NEF,
    CR2, DNG, ARW) are TIFF inside, their first image a thumbnail (or one OpenCV cannot
    decode), and a folder of RAW+JPEG pairs was read twice over; any file starting "BM" (BMP's
    two bytes: a BMI table) was a broken photo. Until now their names had kept them out."""
    folder = tmp_path / "camera"
    folder.mkdir()
    cv2.imwrite(str(folder / "DSC_0001.JPG"), grace_hopper())
    cv2.imwrite(str(folder / "thumb.tif"), grace_hopper()[::8, ::8])
    (folder / "thumb.tif").rename(folder / "DSC_0001.NEF")
    (folder / "BMI.csv").write_text("BMI,weight,height\n22.5,70,1.76\n")
    (folder / "IMG_0002.CR3").write_bytes(_cr3_head())
    assert [p.name for p in open_source(str(folder)).files] == ["DSC_0001.JPG"]
    cv2.imwrite(str(folder / "photo.tif"), grace_hopper())  # a TIFF named as one, or not named, still is
    (folder / "photo.tif").rename(folder / "scan")
    cv2.imwrite(str(folder / "photo.bmp"), grace_hopper())
    (folder / "photo.bmp").rename(folder / "photo.dib")
    assert [p.name for p in open_source(str(folder)).files] == ["DSC_0001.JPG", "photo.dib", "scan"]


def test_a_cameras_raw_file_as_the_source_is_read_as_predict_reads_it(tmp_path, capsys):
    """A NEF given as --source went to the video reader, which announced no frame count: one
    frame of a video, where a face is never confirmed (0 faces, exit 0). It is read as predict
    reads it, its first image as a still (a TIFF of the whole photo here)."""
    raw = tmp_path / "DSC_0003.NEF"
    cv2.imwrite(str(tmp_path / "photo.tif"), grace_hopper())
    (tmp_path / "photo.tif").rename(raw)
    log = tmp_path / "faces.jsonl"
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(raw), "--log", str(log)]) == 0
    assert [len(json.loads(line)["faces"]) for line in log.read_text().splitlines()] == [1]
    capsys.readouterr()
    assert predict_main(["--model", "pretrained", str(raw)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def _video_head(tmp_path, name: str) -> bytes:
    """The first bytes of a real 3-frame video OpenCV writes as `name` (mp4v codec)."""
    path = tmp_path / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path.read_bytes()[:16]


@pytest.mark.parametrize("brand, kind", [
    *((b, "video") for b in (b"mp41", b"mp42", b"avc1", b"3gp5", b"3g2a")),
    *((b, "image") for b in (b"heic", b"heix", b"mif1", b"avif")),
    (b"crx ", "raw"),  # Canon CR3: was "video"
])
def test_an_iso_media_file_is_told_by_its_brand(brand, kind):
    assert content_kind(b"\0\0\0\x18ftyp" + brand + b"\0\0\0\0") == kind


@pytest.mark.parametrize("name, brand", [("v.mp4", b"isom"), ("v.mov", b"qt  "), ("v.m4v", b"M4V "),
                                         ("v.3gp", b"3gp4")])
def test_videos_opencv_writes_are_videos(tmp_path, name, brand):
    head = _video_head(tmp_path, name)
    assert head[4:12] == b"ftyp" + brand and content_kind(head) == "video"


def test_a_folder_named_like_an_image_is_one_line(tmp_path, capsys):
    folder = tmp_path / "photo.jpg"
    folder.mkdir()
    assert predict_main(["--model", "nope.pt", str(folder)]) == 2
    one_error_line(capsys.readouterr().err, f"error: cannot read image {folder}: a folder, not an image file "
                                            f"(name its images, FOLDER/*.jpg; python -m emovision.webcam --source "
                                            f"FOLDER reads a folder and its subfolders)")


def test_odd_but_valid_images_are_read(shipped, tmp_path, capsys):
    """RGBA, 1-channel, palette PNG and GIF, an EXIF-rotated JPEG, a unicode name, 1x1: each
    is read and its face found by predict (the 1x1 has none, and says so). A one-frame GIF
    given to the app went to the video reader, where a face must be confirmed over frames that
    never come: no face; it is now a still, as the same photo in a PNG."""
    hopper = grace_hopper()
    rgb = Image.fromarray(cv2.cvtColor(hopper, cv2.COLOR_BGR2RGB))
    upright = analyze_still(shipped, hopper)[0]["box"]
    rgba = cv2.cvtColor(hopper, cv2.COLOR_BGR2BGRA)
    rgba[:, :60, 3] = 0  # a transparent margin
    paths = {name: tmp_path / name for name in ("rgba.png", "grey.png", "palette.png", "palette.gif",
                                                "rotated.jpg", "Grâce Hopper 表情.png", "dot.png")}
    cv2.imwrite(str(paths["rgba.png"]), rgba)
    cv2.imwrite(str(paths["grey.png"]), cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY))
    for name in ("palette.png", "palette.gif"):
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(paths[name])
    turned = rgb.transpose(Image.Transpose.ROTATE_90)  # stored on its side...
    exif = turned.getexif()
    exif[EXIF_ORIENTATION] = 6  # ...with the tag that says: turn 90 degrees clockwise to view
    turned.save(paths["rotated.jpg"], exif=exif, quality=95)
    cv2.imencode(".png", hopper)[1].tofile(paths["Grâce Hopper 表情.png"])
    cv2.imwrite(str(paths["dot.png"]), hopper[:1, :1])
    assert predict_main(["--model", "pretrained", "--device", "cpu", *map(str, paths.values())]) == 0
    captured = capsys.readouterr()
    boxes = {json.loads(line)["image"]: json.loads(line)["box"] for line in captured.out.splitlines()}
    assert sorted(boxes) == sorted(str(p) for name, p in paths.items() if name != "dot.png")
    assert all(iou_matrix(np.array([box]), np.array([upright]))[0, 0] > 0.8 for box in boxes.values()), boxes
    assert captured.err.strip() == f"no face found in {paths['dot.png']}"
    log = tmp_path / "gif.jsonl"
    assert webcam_main(["--model", "pretrained", "--no-display", "--source", str(paths["palette.gif"]),
                        "--log", str(log)]) == 0
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(record["faces"]) == 1 and iou_matrix(np.array([record["faces"][0]["box"]]), np.array([upright]))[0, 0] > 0.8


def test_a_transparent_image_is_read_as_a_viewer_shows_it(shipped, tmp_path):
    """OpenCV's colour decode drops the alpha and keeps the RGB under it: a face an editor
    erased (alpha 0, its pixels left) was found though no viewer shows it, and an image drawn
    in its alpha over black pixels read as black (no face). Transparent PNG (8 and 16 bits,
    grey + alpha, EXIF-turned), WebP and GIF are now composited over white, as a viewer shows them."""
    hopper = grace_hopper()
    upright = analyze_still(shipped, hopper)[0]["box"]
    erased = np.dstack([np.hstack([hopper, hopper[:, ::-1]]), np.full((600, 1024), 255, np.uint8)])
    erased[:, 512:, 3] = 0  # the mirrored copy on the right erased, its pixels left under the alpha
    cv2.imwrite(str(tmp_path / "erased.png"), erased)
    image = read_image(tmp_path / "erased.png")
    assert (image[:, 512:] == 255).all()
    (face,) = analyze_still(shipped, image)  # the erased copy is not found
    assert iou_matrix(np.array([face["box"]]), np.array([upright]))[0, 0] > 0.8
    grey = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    ink = 255 - grey  # black pixels, the photo drawn by the alpha: over white it shows `grey`
    Image.fromarray(np.dstack([np.zeros_like(grey), ink]), "LA").save(tmp_path / "ink.png")
    for orientation, turn in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        turned = Image.fromarray(np.dstack([np.zeros_like(grey), ink]), "LA").transpose(turn)
        exif = turned.getexif()
        exif[EXIF_ORIENTATION] = orientation  # stored on its side, shown upright
        turned.save(tmp_path / f"ink-{orientation}.png", exif=exif)
        turned.convert("RGBA").save(tmp_path / f"ink-{orientation}.webp", exif=exif, lossless=True)
    cv2.imwrite(str(tmp_path / "ink-16.png"), np.dstack([np.zeros((600, 512, 3), np.uint16), ink.astype(np.uint16) * 257]))
    Image.fromarray(np.dstack([np.zeros((600, 512, 3), np.uint8), ink])).save(tmp_path / "ink.webp", lossless=True)
    for name in ("ink.png", "ink-6.png", "ink-8.png", "ink-16.png", "ink.webp", "ink-6.webp", "ink-8.webp"):
        image = read_image(tmp_path / name)
        assert np.abs(image.astype(int) - grey[..., None]).max() <= 1, name
    assert iou_matrix(np.array([analyze_still(shipped, read_image(tmp_path / "ink.png"))[0]["box"]]),
                      np.array([upright]))[0, 0] > 0.8
    sticker = Image.fromarray(erased[:, :, [2, 1, 0, 3]], "RGBA").convert("P", palette=Image.Palette.ADAPTIVE)
    for name in ("sticker.gif", "sticker.png"):  # a palette's transparent colour (GIF, PNG tRNS)
        sticker.save(tmp_path / name, transparency=sticker.getpixel((1023, 0)))
        assert (read_image(tmp_path / name)[:, 512:] == 255).all(), name
    np.testing.assert_array_equal(read_image(tmp_path / "erased.png", cv2.IMREAD_GRAYSCALE)[:, 512:], 255)


def test_a_transparent_tiff_or_avif_is_read_as_a_viewer_shows_it(tmp_path):
    """TIFF and AVIF were left out of the transparent files: a TIFF's transparent part read black
    (libtiff multiplies the colours by the alpha), an AVIF's kept the pixels under its alpha (an
    erased face found). Both are now shown over white, a TIFF's half-transparent levels too."""
    hopper = grace_hopper()[::2, ::2]  # 300 x 256: enough to compare levels, cheap to encode
    grey = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    ink = 255 - grey  # black pixels, the photo drawn by the alpha (soft: every level): over white it shows `grey`
    erased = np.dstack([hopper[..., ::-1], np.full(grey.shape, 255, np.uint8)])
    erased[:, 128:, 3] = 0  # the right half erased, its pixels left under the alpha
    Image.fromarray(np.dstack([np.zeros_like(hopper), ink])).save(tmp_path / "ink.tif")
    turned = Image.fromarray(np.dstack([np.zeros_like(hopper), ink])).transpose(Image.Transpose.ROTATE_90)
    exif = turned.getexif()
    exif[EXIF_ORIENTATION] = 6  # stored on its side, shown upright (OpenCV turns a TIFF itself)
    turned.save(tmp_path / "ink-6.tif", exif=exif)
    for name in ("ink.tif", "ink-6.tif"):
        assert np.abs(read_image(tmp_path / name).astype(int) - grey[..., None]).max() <= 1, name
    Image.fromarray(erased).save(tmp_path / "erased.tif")
    Image.fromarray(erased).save(tmp_path / "erased.avif", quality=90)
    for name in ("erased.tif", "erased.avif"):
        image = read_image(tmp_path / name)
        assert image[:, 128:].min() >= 250, name  # AVIF's lossy alpha: within a few levels of white
        assert np.abs(image[:, :120].astype(int) - hopper[:, :120]).mean() < 3, name  # the kept half as it was
    np.testing.assert_array_equal(read_image(tmp_path / "erased.tif", cv2.IMREAD_GRAYSCALE)[:, 128:], 255)
    # a fourth channel that is not alpha (ExtraSamples 0: infrared, a mask) is no transparency
    data = bytearray((tmp_path / "erased.tif").read_bytes())
    directory = int.from_bytes(data[4:8], "little")
    for entry in range(directory + 2, directory + 2 + 12 * int.from_bytes(data[directory:directory + 2], "little"), 12):
        if int.from_bytes(data[entry:entry + 2], "little") == 0x0152:  # ExtraSamples: 2 (alpha) -> 0
            data[entry + 8:entry + 10] = bytes(2)
    (tmp_path / "infrared.tif").write_bytes(data)
    assert np.abs(read_image(tmp_path / "infrared.tif")[:, 128:].astype(int) - hopper[:, 128:]).mean() < 1


def test_a_10_or_12_bit_avif_or_pnm_reads_as_the_8_bit_photo(tmp_path):
    """OpenCV decodes a 10- or 12-bit AVIF at its depth as uint16 at its own range (0..1023), and a
    PGM/PPM with its stored values whatever its maxval, which the level rule (uint16: 0..65535) read
    near black: 'no face found', exit 0. Each now reads as the 8-bit photo it holds."""
    hopper = grace_hopper()[::2, ::2]
    for bits in (10, 12):
        levels = (hopper.astype(np.uint32) * ((1 << bits) - 1) // 255).astype(">u2")
        for magic, image in ((b"P6", levels[..., ::-1]), (b"P5", levels[..., 1])):
            path = tmp_path / f"hopper-{bits}.{'ppm' if magic == b'P6' else 'pgm'}"
            path.write_bytes(b"%s\n# %d bits\n256 300\n%d\n" % (magic, bits, (1 << bits) - 1) + image.tobytes())
            read = read_image(path)
            assert np.abs(read.astype(int) - (hopper if magic == b"P6" else hopper[..., 1:2])).max() <= 1, path.name
    alpha = np.full(hopper.shape[:2], 255, np.uint8)
    alpha[:, :128] = 0
    for bits in (10, 12):
        for name, image in (("opaque", hopper), ("transparent", np.dstack([hopper, alpha]))):
            levels = (image.astype(np.uint32) * ((1 << bits) - 1) // 255).astype(np.uint16)
            path = tmp_path / f"hopper-{bits}-{name}.avif"
            assert cv2.imwrite(str(path), levels, [cv2.IMWRITE_AVIF_DEPTH, bits, cv2.IMWRITE_AVIF_QUALITY, 100])
            assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).max() < 1 << bits  # OpenCV's own range, not 16 bits
            read = read_image(path)
            assert np.abs(read[:, 128:].astype(int) - hopper[:, 128:]).mean() < 1, path.name
            if name == "transparent":
                assert (read[:, :128] == 255).all(), path.name

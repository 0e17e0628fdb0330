"""The prepare stage: readers, split mapping, bad input, atomic output."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from emovision.data import CLASSES
from emovision.data.fer2013 import read_csv, read_folders, write_csv
from emovision.data.prepared import load_meta, load_split
from stages.prepare import main as prepare_main
from tests.conftest import REPO, write_params

FER_COUNTS = {  # ../shared/data/README.md
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "val": [467, 56, 496, 895, 653, 415, 607],
    "test": [491, 55, 528, 879, 594, 416, 626],
}


def tiny_splits(n_per_class: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "val", "test"):
        y = np.repeat(np.arange(len(CLASSES)), n_per_class)
        x = rng.integers(0, 256, (len(y), 48, 48), dtype=np.uint8)
        out[split] = (x, y)
    return out


def run_prepare(tmp_path, raw_dir, **data):
    params = write_params(tmp_path / "params.yaml", {"data": {
        "source": "fer2013", "raw_dir": str(raw_dir), "prepared_dir": str(tmp_path / "prepared"), **data}})
    return prepare_main(["--params", str(params)])


def test_csv_roundtrip_and_split_mapping(tmp_path):
    splits = tiny_splits()
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(splits, raw / "fer2013.csv")
    assert run_prepare(tmp_path, raw) == 0
    for split in ("train", "val", "test"):
        x, y = load_split(tmp_path / "prepared", split)
        assert x.dtype == np.uint8 and x.shape == (14, 48, 48) and y.dtype == np.int64
        np.testing.assert_array_equal(x, splits[split][0])
        np.testing.assert_array_equal(y, splits[split][1])
    meta = load_meta(tmp_path / "prepared")
    assert meta["source"] == "fer2013" and meta["classes"] == list(CLASSES)
    assert meta["counts"]["val"] == {c: 2 for c in CLASSES}


def write_folder_layout(base, splits, prefixes=True, ext=".png", case=str.lower):
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    for split, (x, y) in splits.items():
        folder = "train" if split == "train" else "test"
        for i, (img, label) in enumerate(zip(x, y)):
            d = base / folder / case(CLASSES[label])
            d.mkdir(parents=True, exist_ok=True)
            name = f"{usage[split]}_{split}{i}{ext}" if prefixes else f"im{split}{i}{ext}"
            cv2.imwrite(str(d / name), img)


def test_folder_layout_prefixes_give_the_split(tmp_path):
    splits = tiny_splits()
    raw = tmp_path / "raw"
    write_folder_layout(raw / "fer2013", splits, case=str.capitalize)  # class folders in any case
    assert run_prepare(tmp_path, raw) == 0
    for split in ("train", "val", "test"):
        x, y = load_split(tmp_path / "prepared", split)
        assert sorted(y.tolist()) == sorted(splits[split][1].tolist())
        # PNG is lossless: the same set of images comes back
        assert {img.tobytes() for img in x} == {img.tobytes() for img in splits[split][0]}


def test_folder_layout_without_prefixes_splits_test_folder_in_halves(tmp_path):
    splits = tiny_splits(n_per_class=10)
    write_folder_layout(tmp_path / "raw", splits, prefixes=False)
    result = read_folders(tmp_path / "raw")
    assert len(result.splits["train"][1]) == 70
    n_val, n_test = len(result.splits["val"][1]), len(result.splits["test"][1])
    assert n_val + n_test == 140 and 40 <= n_val <= 100  # a stable hash split, about half each
    again = read_folders(tmp_path / "raw")
    np.testing.assert_array_equal(result.splits["val"][0], again.splits["val"][0])


def test_other_sizes_and_colour_become_48x48_gray(tmp_path):
    base = tmp_path / "raw"
    for folder, prefix in (("train", "Training"), ("test", "PublicTest"), ("test", "PrivateTest")):
        d = base / folder / "happy"
        d.mkdir(parents=True, exist_ok=True)
        colour = np.full((96, 120, 3), (0, 128, 255), np.uint8)
        cv2.imwrite(str(d / f"{prefix}_1.jpg"), colour)
    result = read_folders(base)
    x, y = result.splits["val"]
    assert x.shape == (1, 48, 48) and y.tolist() == [CLASSES.index("happy")]
    assert abs(x.mean() - 151) <= 2  # BGR (0,128,255): 0.299*255 + 0.587*128 = 151


CSV_HEADER = "emotion,pixels,Usage\n"
GOOD_PIXELS = " ".join(["7"] * 2304)


@pytest.mark.parametrize("body, message", [
    ("emotion,pix,Usage\n0,1,Training\n", "missing column(s) pixels"),
    (f"emotion,pixels,Usage, Usage\n0,{GOOD_PIXELS},Training,Training\n", "column(s) Usage appear twice"),
    (CSV_HEADER + f"0,{GOOD_PIXELS},Training\n3,1 2 3,Training\n", "line 3: pixels has 3 values, expected 2304"),
    (CSV_HEADER + f"0,{' '.join(['7'] * 2303)} x,Training\n", "line 2: pixels has a non-integer value 'x'"),
    (CSV_HEADER + f"0,{' '.join(['7'] * 2303)} 300,Training\n", "line 2: pixels has a value outside 0..255 (300)"),
    (CSV_HEADER + f"9,{GOOD_PIXELS},Training\n", "line 2: emotion '9' is not a label 0..6"),
    (CSV_HEADER + f"1,{GOOD_PIXELS},Validation\n", "line 2: unknown Usage 'Validation'"),
    (CSV_HEADER + f"1,{GOOD_PIXELS},Training\n", "split 'val' is empty: the dataset has no images for it "
                                                  "(FER2013's PublicTest: PublicTest_* files or Usage PublicTest rows)"),
])
def test_bad_csv_exits_2_naming_the_problem(tmp_path, capsys, body, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "fer2013.csv").write_text(body)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "meta.json").write_text("previous output")
    assert run_prepare(tmp_path, raw) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    # nothing half-written: the previous output is untouched, no temp folders remain
    assert (tmp_path / "prepared" / "meta.json").read_text() == "previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared", "raw"]


def test_kaggle_icml_header_with_spaces_and_padded_usage_are_read(tmp_path, capsys):
    """The Kaggle challenge download (icml_face_data.csv) has the header `emotion, Usage, pixels`:
    saved as fer2013.csv it was refused ('missing column(s) pixels, Usage'). Names and Usage
    values count without surrounding whitespace; another Usage is still refused by row and value."""
    splits = tiny_splits()
    raw = tmp_path / "raw"
    raw.mkdir()
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    rows = ["emotion, Usage, pixels"]
    for split, (x, y) in splits.items():
        for i, (img, label) in enumerate(zip(x, y)):
            padded = f"{usage[split]} " if i % 2 else f" {usage[split]}"
            rows.append(f"{label},{padded},{' '.join(map(str, img.ravel()))}")
    (raw / "fer2013.csv").write_text("\n".join(rows) + "\n")
    assert run_prepare(tmp_path, raw) == 0
    for split in ("train", "val", "test"):
        x, y = load_split(tmp_path / "prepared", split)
        np.testing.assert_array_equal(x, splits[split][0])
        np.testing.assert_array_equal(y, splits[split][1])
    with open(raw / "fer2013.csv", "a") as f:
        f.write(f"1, Validation ,{GOOD_PIXELS}\n")
    assert run_prepare(tmp_path, raw) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fer2013.csv line 44: unknown Usage ' Validation '" in err


@pytest.mark.parametrize("folder, says", [("raw", "prepare replaces that whole folder"),
                                          ("models", "prepare replaces that whole folder"),
                                          (".", "holds the project's params.yaml")])  # every stage refuses it
def test_a_prepared_dir_holding_other_files_is_refused_untouched(tmp_path, monkeypatch, capsys, folder, says):
    """prepare replaces data.prepared_dir whole: pointed at the raw data, models/ or the project
    it would delete them. It refuses in one line and leaves every file where it was."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(tiny_splits(), raw / "fer2013.csv")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "best.pt").write_bytes(b"a trained model")
    params = write_params(tmp_path / "params.yaml", {"data": {
        "source": "fer2013", "raw_dir": "raw", "prepared_dir": folder}})
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert prepare_main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data.prepared_dir {folder}") and err.count("\n") == 1
    assert says in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "models" / "best.pt").read_bytes() == b"a trained model"


def test_skip_mode_drops_bad_rows_and_reports(tmp_path, capsys):
    splits = tiny_splits()
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(splits, raw / "fer2013.csv")
    with open(raw / "fer2013.csv", "a") as f:
        f.write("12,1 2,Training\n4,1 2,Training\n")
    assert run_prepare(tmp_path, raw, on_bad_row="skip") == 0
    out = capsys.readouterr()
    assert "skipped 2 bad rows" in out.err
    assert load_meta(tmp_path / "prepared")["skipped"] == 2
    assert len(load_split(tmp_path / "prepared", "train")[1]) == 14


def test_unreadable_image_is_named(tmp_path, capsys):
    splits = tiny_splits(1)
    raw = tmp_path / "raw"
    write_folder_layout(raw, splits)
    bad = raw / "train" / "sad" / "Training_broken.jpg"
    bad.write_bytes(b"not a jpeg")
    assert run_prepare(tmp_path, raw) == 2
    assert f"{bad}: unreadable image file" in capsys.readouterr().err


def test_a_class_without_training_images_is_refused(tmp_path, capsys):
    """A class folder missing from train/ prepared a dataset, and trained a model, without it."""
    raw = tmp_path / "raw"
    write_folder_layout(raw, tiny_splits(1))
    shutil.rmtree(raw / "train" / "disgust")
    assert run_prepare(tmp_path, raw) == 2
    err = capsys.readouterr().err
    assert f"{raw}: no Training images of disgust; the model learns all 7 classes" in err
    assert err.count("\n") == 1 and not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("csv_in", ["raw", "raw/fer2013"])
def test_csv_and_image_folders_both_there_read_the_csv_and_say_so(tmp_path, capsys, csv_in):
    """With fer2013.csv and the image folders both in data/raw/, prepare read the CSV and said
    nothing of the folders (which may hold other images, or another split of test/)."""
    raw = tmp_path / "raw"
    write_folder_layout(raw / "fer2013", tiny_splits(1, seed=1))
    csv = tmp_path / csv_in / "fer2013.csv"
    write_csv(tiny_splits(2), csv)
    assert run_prepare(tmp_path, raw, source="auto") == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {raw / 'fer2013'}/ also holds FER2013 as image folders (train/ and test/): "
                        f"ignored, prepare read {csv} (move the copy you do not want out of {raw}/ to "
                        f"silence this)"], out.err
    assert load_meta(tmp_path / "prepared")["counts"]["val"] == {c: 2 for c in CLASSES}  # the CSV's
    write_csv({s: v for s, v in tiny_splits(2).items() if s != "val"}, csv)  # a refusal stays one line
    assert run_prepare(tmp_path, raw, source="auto") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split 'val' is empty" in err
    csv.unlink()
    assert run_prepare(tmp_path, raw, source="auto") == 0  # one copy: nothing to say
    assert "warning" not in capsys.readouterr().err
    assert load_meta(tmp_path / "prepared")["counts"]["train"] == {c: 1 for c in CLASSES}


def test_a_class_without_val_or_test_images_is_named(tmp_path, capsys):
    """A PublicTest or PrivateTest split without a class (a damaged or partial download) was
    prepared in silence; evaluate then scores that class's F1 as 0 in macro-F1. Nothing crashes,
    so prepare goes on, with a warning per split naming the classes."""
    splits = tiny_splits(2)
    for split, gone in (("val", [1]), ("test", [1, 2])):
        x, y = splits[split]
        keep = ~np.isin(y, gone)
        splits[split] = (x[keep], y[keep])
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(splits, raw / "fer2013.csv")
    assert run_prepare(tmp_path, raw) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {raw / 'fer2013.csv'}: no PublicTest (val) images of disgust; FER2013 has every class in "
        f"every split, so this copy looks damaged or partial, and val's macro-F1 counts its F1 as 0",
        f"warning: {raw / 'fer2013.csv'}: no PrivateTest (test) images of disgust, fear; FER2013 has every class "
        f"in every split, so this copy looks damaged or partial, and test's macro-F1 counts their F1 as 0"]
    assert load_meta(tmp_path / "prepared")["counts"]["test"]["fear"] == 0


def test_fer2013_source_without_data_says_where_to_put_it(tmp_path):
    params = write_params(tmp_path / "p.yaml", {"data": {"source": "fer2013", "raw_dir": str(tmp_path / "raw")}})
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no dataset is in" in out.stderr and "fer2013.csv" in out.stderr


def test_auto_without_data_builds_the_demo_set(tmp_path):
    params = write_params(tmp_path / "p.yaml", {"data": {
        "source": "auto", "raw_dir": str(tmp_path / "raw"), "prepared_dir": str(tmp_path / "prepared")}})
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "SYNTHETIC" in out.stdout
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["source"] == "synthetic"
    assert all(meta["counts"][s][c] > 0 for s in ("train", "val", "test") for c in CLASSES)


@pytest.mark.parametrize("misplace, says", [
    (lambda raw: shutil.rmtree(raw / "fer2013" / "test"), "fer2013/train/ is there but not its test/"),
    (lambda raw: (raw / "fer2013").rename(raw / "archive"), "archive/ holds FER2013's train/ and test/ one level "
                                                             "too deep"),
    (lambda raw: (raw / "fer2013").rename(raw / "x") and (raw / "fer2013").mkdir()
     or (raw / "x").rename(raw / "fer2013" / "fer2013"), "fer2013/fer2013/ holds FER2013's"),
    (lambda raw: shutil.rmtree(raw / "fer2013") or write_csv(tiny_splits(1), raw / "icml_face_data.csv"),
     "icml_face_data.csv is a CSV but not fer2013.csv"),
    (lambda raw: shutil.rmtree(raw / "fer2013") or (raw / "fer2013-images.tar.xz").write_bytes(b"xz"),
     "fer2013-images.tar.xz is an archive: unpack it"),
    (lambda raw: [(raw / "fer2013" / d).rename(raw / "fer2013" / d.upper()) for d in ("train", "test")],
     "fer2013/TEST/ is named in another case: FER2013's folders are train/ and test/, lower case"),
])
def test_fer2013_put_where_it_is_not_read_is_named_not_replaced_by_the_demo_set(tmp_path, capsys, misplace, says):
    """`data.source: auto` took a half-unpacked FER2013 (train/ alone), one unpacked a folder too deep,
    a CSV of another name or an archive not unpacked for no FER2013, and prepared the demo set
    under a banner saying `no FER2013 in data/raw/`."""
    raw = tmp_path / "raw"
    write_folder_layout(raw / "fer2013", tiny_splits(1))
    misplace(raw)
    for source in ("auto", "fer2013"):
        assert run_prepare(tmp_path, raw, source=source) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err and err.startswith(f"error: {raw}/"), err
        assert not (tmp_path / "prepared").exists()


def test_real_fer2013_counts(tmp_path, fer2013_prepared):
    meta = load_meta(fer2013_prepared)
    for split, counts in FER_COUNTS.items():
        assert [meta["counts"][split][c] for c in CLASSES] == counts
    # the CSV path on the same real pixels (a 3,000-row slice keeps the test fast)
    subset = {s: tuple(a[:1000] for a in load_split(fer2013_prepared, s)) for s in FER_COUNTS}
    write_csv(subset, tmp_path / "fer2013.csv")
    back = read_csv(tmp_path / "fer2013.csv")
    for s in subset:
        np.testing.assert_array_equal(back.splits[s][0], subset[s][0])


def test_truncated_jpeg_is_refused_or_skipped(tmp_path, capsys):
    """A truncated JPEG decodes (grey rows, a libjpeg warning), so it used to be accepted."""
    raw = tmp_path / "raw"
    write_folder_layout(raw, tiny_splits(1), ext=".jpg")
    good = next((raw / "train" / "happy").glob("*.jpg"))
    cut = good.with_name("Training_cut.jpg")
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    assert cv2.imread(str(cut), cv2.IMREAD_GRAYSCALE) is not None  # OpenCV alone would accept it
    assert run_prepare(tmp_path, raw) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cut}: truncated JPEG (no end-of-image marker after the image data) " \
                  f"(set data.on_bad_row: skip to drop such rows)"
    assert not (tmp_path / "prepared").exists()  # nothing half-written
    assert run_prepare(tmp_path, raw, on_bad_row="skip") == 0
    assert "skipped 1 bad rows" in capsys.readouterr().err


def test_every_format_the_image_reader_takes_is_read(tmp_path):
    """prepare picked files by its own list of five extensions, so WebP, TIFF, PPM, JPEG 2000
    faces (formats the one reader takes) were left out in silence: 20 of 105 faces, rc 0."""
    raw = tmp_path / "raw"
    splits = tiny_splits(2)
    write_folder_layout(raw, splits)
    others = (".webp", ".tif", ".tiff", ".ppm", ".jp2")
    for path, ext in zip(sorted((raw / "train").rglob("*.png")), others):
        assert cv2.imwrite(str(path.with_suffix(ext)), cv2.imread(str(path)))  # colour: PPM takes no grey
        path.unlink()
    assert run_prepare(tmp_path, raw) == 0
    counts = load_meta(tmp_path / "prepared")["counts"]
    assert {s: sum(c.values()) for s, c in counts.items()} == {s: len(y) for s, (_, y) in splits.items()}


def test_hidden_folders_and_files_are_ignored(tmp_path):
    raw = tmp_path / "raw"
    splits = tiny_splits(1)
    write_folder_layout(raw, splits)
    for folder in (raw / "train", raw / "test", raw / "train" / "sad"):
        hidden = folder / ".ipynb_checkpoints"
        hidden.mkdir()
        (hidden / "Training_copy-checkpoint.jpg").write_bytes(b"not an image")
    (raw / "train" / "sad" / "._Training_1.jpg").write_bytes(b"macOS resource fork")
    assert run_prepare(tmp_path, raw) == 0
    counts = load_meta(tmp_path / "prepared")["counts"]
    assert {s: sum(c.values()) for s, c in counts.items()} == {s: len(y) for s, (_, y) in splits.items()}


def test_progress_lines_without_a_terminal_and_quiet(tmp_path, capsys):
    """Under `dvc repro` stdout is a pipe: a line per 10% of the rows; --quiet: none."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(tiny_splits(3), raw / "fer2013.csv")  # 63 rows
    assert run_prepare(tmp_path, raw) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reading fer2013.csv")]
    assert len(lines) == 10 and lines[0].startswith("reading fer2013.csv: 11% (7/63 rows")
    assert lines[-1].startswith("reading fer2013.csv: 100% (63/63 rows")
    params = tmp_path / "params.yaml"
    assert prepare_main(["--params", str(params), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reading" not in out and "wrote" in out  # results still print


# Python's audit hook sees each rename just before it happens: the second one (the new folder
# into data/prepared) is the moment between prepare's two renames.
SIGNAL_BETWEEN_THE_RENAMES = """
import os, signal, sys
def hook(event, args):
    if event == "os.rename" and ".prepared.tmp-" in str(args[0]):
        os.kill(os.getpid(), signal.{sig})
sys.addaudithook(hook)
from stages.prepare import main
sys.exit(main(["--params", "params.yaml"]))
"""


def prepare_signalled_between_the_renames(root, sig: str) -> subprocess.CompletedProcess:
    write_params(root / "params.yaml")
    assert prepare_main(["--params", "params.yaml"]) == 0
    return subprocess.run([sys.executable, "-c", SIGNAL_BETWEEN_THE_RENAMES.format(sig=sig)], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)


def test_ctrl_c_between_the_renames_finishes_the_swap(in_tmp):
    """Ctrl-C after the old data/prepared/ was moved aside left no data/prepared/ at all and
    the old data in a hidden .prepared.old-PID. The swap now ends first, then Ctrl-C stops."""
    out = prepare_signalled_between_the_renames(in_tmp, "SIGINT")
    assert out.returncode == 130 and out.stderr.strip() == "interrupted", out.stderr
    assert load_meta(in_tmp / "data" / "prepared")["source"] == "synthetic"
    assert sorted(p.name for p in (in_tmp / "data").iterdir()) == ["prepared"]


def test_a_prepare_killed_between_the_renames_is_recovered_by_the_next(in_tmp, capsys):
    out = prepare_signalled_between_the_renames(in_tmp, "SIGKILL")
    assert out.returncode == -signal.SIGKILL
    data = in_tmp / "data"
    old, = data.glob(".prepared.old-*")
    tmp, = data.glob(".prepared.tmp-*")
    assert not (data / "prepared").exists()
    assert prepare_main(["--params", "params.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"restored data/prepared/ from {old.name}/, where an interrupted writer had moved it" in lines
    assert f"removed data/{tmp.name}/, left by an interrupted writer of data/prepared/" in lines
    assert sorted(p.name for p in data.iterdir()) == ["prepared"]

"""FER2013 readers: the Kaggle CSV (`emotion,pixels,Usage`) and the image-folder layout.

Both return `{split: (x uint8 (N, 48, 48), y int64 (N,))}` for the splits train
(Training), val (PublicTest) and test (PrivateTest), plus a list of skipped items when
`on_bad_row="skip"`. Every malformed input raises `DataError` naming the line or file.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from emovision import progress
from emovision.data import CLASSES, IMAGE_SIZE, SPLITS, USAGE_TO_SPLIT
from emovision.device import usable_cpus
from emovision.errors import DataError
from emovision.images import IMAGE_EXTENSIONS, read_image  # the one reader's formats: a face in any is read

CSV_NAME = "fer2013.csv"
CSV_COLUMNS = ("emotion", "pixels", "Usage")
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
# Folder-layout file-name prefixes carry the original Usage of fer2013.csv.
PREFIX_TO_SPLIT = {f"{usage}_": split for usage, split in USAGE_TO_SPLIT.items()}

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class ReadResult:
    splits: Splits
    layout: str  # "csv" or "folders"
    path: Path
    skipped: list[str] = field(default_factory=list)  # "where: why", one per skipped row/file
    ignored: list[tuple[str, Path]] = field(default_factory=list)  # other copies found, not read


def all_fer2013(raw_dir: Path) -> list[tuple[str, Path]]:
    """Every copy of FER2013 under raw_dir, the one read first: ('csv', file) or ('folders', dir
    with train/ and test/), raw_dir before raw_dir/fer2013 and, in one folder, the CSV before the
    image folders (its Usage column gives the exact PublicTest/PrivateTest split)."""
    return [copy for base in (raw_dir, raw_dir / "fer2013") for copy in copies_in(base)]


def copies_in(folder: Path) -> list[tuple[str, Path]]:
    """The copies of FER2013 directly in `folder`, the CSV first: ('csv', file), ('folders', folder)."""
    found = [("csv", folder / CSV_NAME)] if (folder / CSV_NAME).is_file() else []
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        found.append(("folders", folder))
    return found


def find_fer2013(raw_dir: Path) -> tuple[str, Path] | None:
    """The copy of FER2013 under raw_dir that prepare reads (`all_fer2013`'s first), or None."""
    found = all_fer2013(raw_dir)
    return found[0] if found else None


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".7z", ".rar")


def misplaced_fer2013(raw_dir: Path) -> str | None:
    """Why raw_dir holds what looks like FER2013 that `find_fer2013` does not read (half of the
    folder layout, the layout one folder too deep, a CSV of another name, an archive not
    unpacked), or None. Without it `data.source: auto` prepared the demo set in silence."""
    for base in (raw_dir, raw_dir / "fer2013"):
        if not base.is_dir():
            continue
        halves = [name for name in ("train", "test") if (base / name).is_dir()]
        if len(halves) == 1:
            other = "test" if halves == ["train"] else "train"
            return f"{base / halves[0]}/ is there but not its {other}/ (FER2013's folder layout needs both)"
        for child in sorted(base.iterdir()):
            if child.name.startswith(".") or child.name in ("train", "test"):
                continue
            if child.is_dir() and child.name.lower() in ("train", "test"):  # class folders may be any case; these not
                return f"{child}/ is named in another case: FER2013's folders are train/ and test/, lower case"
            deeper = copies_in(child) if child.is_dir() and child != raw_dir / "fer2013" else []
            if deeper:
                what = CSV_NAME if deeper[0][0] == "csv" else "train/ and test/"
                return f"{child}/ holds FER2013's {what} one level too deep: move {what} into {raw_dir / 'fer2013'}/"
            if child.is_file() and child.suffix.lower() == ".csv":
                return f"{child} is a CSV but not {CSV_NAME}: rename it if it holds {','.join(CSV_COLUMNS)} rows"
            if child.is_file() and child.name.lower().endswith(ARCHIVE_SUFFIXES):
                return (f"{child} is an archive: unpack it into {raw_dir / 'fer2013'}/ (train/ and test/ "
                        f"folders, or {CSV_NAME})")
    return None


def read_fer2013(raw_dir: Path, on_bad_row: str = "error") -> ReadResult:
    found = all_fer2013(raw_dir)
    if not found:
        raise DataError(
            f"no FER2013 found in {raw_dir}/: put fer2013.csv there, or unpack the image folders "
            f"(train/<class>/*.jpg, test/<class>/*.jpg) into {raw_dir}/fer2013/"
        )
    layout, path = found[0]
    reader = read_csv if layout == "csv" else read_folders
    result = reader(path, on_bad_row)
    result.ignored = found[1:]
    return result


def _bad(skipped: list[str], on_bad_row: str, where: str, why: str) -> None:
    if on_bad_row == "error":
        raise DataError(f"{where}: {why} (set data.on_bad_row: skip to drop such rows)")
    skipped.append(f"{where}: {why}")


def _parse_pixels(text: str) -> np.ndarray | str:
    """One row's pixel string -> (2304,) uint8 array, or the reason it is malformed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (not raises) on a non-numeric token
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError):
            bad = next((t for t in text.split() if not t.lstrip("-").isdigit()), text[:20])
            return f"pixels has a non-integer value {bad!r}"
    if values.size != N_PIXELS:
        return f"pixels has {values.size} values, expected {N_PIXELS} (48x48)"
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        return f"pixels has a value outside 0..255 ({low if low < 0 else high})"
    return values.astype(np.uint8)


def read_csv(path: Path, on_bad_row: str = "error") -> ReadResult:
    """Kaggle fer2013.csv; bad rows are named by their line number (the header is line 1)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    # Kaggle's challenge download (icml_face_data.csv) writes `emotion, Usage, pixels`: the same
    # columns with a space after each comma, so names count without surrounding whitespace.
    names = [str(c).strip() for c in df.columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {', '.join(twice)} appear twice in the header "
                        f"({','.join(map(str, df.columns))}); expected each of {','.join(CSV_COLUMNS)} once")
    df.columns = names
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}, "
            f"found {','.join(map(str, df.columns))}"
        )
    valid_labels = {str(i): i for i in range(len(CLASSES))}
    skipped: list[str] = []
    x = np.empty((len(df), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    y = np.empty(len(df), dtype=np.int64)
    split_of = np.empty(len(df), dtype=object)
    keep = 0
    rows = zip(df["emotion"].to_numpy(), df["pixels"].to_numpy(), df["Usage"].to_numpy())
    for i, (emotion, pixels, usage) in enumerate(progress.track(rows, len(df), f"reading {path.name}", "rows")):
        where = f"{path.name} line {i + 2}"
        label = valid_labels.get(emotion.strip())
        if label is None:
            _bad(skipped, on_bad_row, where, f"emotion {emotion!r} is not a label 0..{len(CLASSES) - 1}")
            continue
        split = USAGE_TO_SPLIT.get(usage.strip())  # `Training ` or ` PublicTest` (padded columns) too
        if split is None:
            _bad(skipped, on_bad_row, where,
                 f"unknown Usage {usage!r} (expected {', '.join(USAGE_TO_SPLIT)})")
            continue
        values = _parse_pixels(pixels)
        if isinstance(values, str):
            _bad(skipped, on_bad_row, where, values)
            continue
        x[keep] = values.reshape(IMAGE_SIZE, IMAGE_SIZE)
        y[keep] = label
        split_of[keep] = split
        keep += 1
    x, y, split_of = x[:keep], y[:keep], split_of[:keep]
    splits = {s: (x[split_of == s], y[split_of == s]) for s in SPLITS}
    return ReadResult(splits, "csv", path, skipped)


def _split_for(path: Path, folder_split: str) -> str:
    """Original split from the file-name prefix; without one, train/ is train and test/ is
    divided into val and test by a stable hash of the file name (about half each)."""
    for prefix, split in PREFIX_TO_SPLIT.items():
        if path.name.startswith(prefix):
            return split
    if folder_split == "train":
        return "train"
    digest = hashlib.md5(path.name.encode()).digest()[0]
    return "val" if digest % 2 == 0 else "test"


def _class_dirs(folder: Path) -> dict[int, Path]:
    """Class sub-folders of train/ or test/, matched case-insensitively to CLASSES; hidden
    entries (a name starting with '.', as Jupyter's .ipynb_checkpoints/) are ignored."""
    found = {}
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):  # .ipynb_checkpoints/, .DS_Store, .git: never data
            continue
        if child.is_dir():
            name = child.name.lower()
            if name not in CLASSES:
                raise DataError(f"{child}: unknown class folder; expected {', '.join(CLASSES)} (any case)")
            found[CLASSES.index(name)] = child
    return found


def _read_image(path: Path) -> np.ndarray | str:
    """Any size or colour -> 48x48 grayscale (INTER_AREA when shrinking), or why it is unusable
    (`emovision.images.read_image`: a truncated JPEG is named as such)."""
    img = read_image(path, cv2.IMREAD_GRAYSCALE)
    if isinstance(img, str):
        return img
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shrink = min(img.shape) > IMAGE_SIZE
        img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return img


def read_folders(base: Path, on_bad_row: str = "error") -> ReadResult:
    """Kaggle image-folder layout: base/{train,test}/<class>/*.jpg|png."""
    files: list[tuple[Path, int, str]] = []
    for folder_split in ("train", "test"):
        for label, class_dir in _class_dirs(base / folder_split).items():
            for entry in os.scandir(class_dir):
                if entry.name.startswith("."):  # hidden: editor/OS leftovers such as ._face.jpg
                    continue
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    path = Path(entry.path)
                    files.append((path, label, _split_for(path, folder_split)))
    files.sort(key=lambda f: (f[2], f[1], f[0].name))  # stable order across file systems
    # cv2 releases the GIL while decoding, so threads use every usable core.
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        images = list(progress.track(pool.map(_read_image, (f[0] for f in files), chunksize=256),
                                     len(files), f"reading {base}", "images"))
    skipped: list[str] = []
    keep = []
    for i, (img, (path, _, _)) in enumerate(zip(images, files)):
        if isinstance(img, str):
            _bad(skipped, on_bad_row, str(path), img)
        else:
            keep.append(i)
    x = np.stack([images[i] for i in keep]) if keep else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    y = np.array([files[i][1] for i in keep], dtype=np.int64)
    split_of = np.array([files[i][2] for i in keep], dtype=object)
    splits = {s: (x[split_of == s], y[split_of == s]) for s in SPLITS}
    return ReadResult(splits, "folders", base, skipped)


SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}


def write_csv(splits: Splits, path: Path) -> None:
    """Write splits in the Kaggle fer2013.csv schema (emotion,pixels,Usage)."""
    frames = []
    for split, (x, y) in splits.items():
        pixels = [" ".join(map(str, img.ravel().tolist())) for img in x]
        frames.append(pd.DataFrame({"emotion": y, "pixels": pixels, "Usage": SPLIT_TO_USAGE[split]}))
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)

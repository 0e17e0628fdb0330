"""Stage 1: raw FER2013 (CSV or image folders) or the built-in demo set -> data/prepared/."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from emovision import fileio
from emovision.config import Params
from emovision.data import CLASSES, SPLITS
from emovision.data.fer2013 import SPLIT_TO_USAGE, Splits, find_fer2013, misplaced_fer2013, read_fer2013
from emovision.data.prepared import check_replaceable, class_counts, write_prepared
from emovision.data.synthetic import generate_synthetic

from emovision.errors import DataError, cli_main
from stages import parse, stage_parser

BANNER = "=" * 72


def prepare(params: Params) -> dict:
    """Choose the source, read or generate it, and write data/prepared/. Returns meta."""
    data = params.data
    raw_dir = Path(data.raw_dir)
    source = data.source
    if source == "auto":
        source = "fer2013" if find_fer2013(raw_dir) else "synthetic"
    started = time.perf_counter()
    warnings: list[str] = []  # printed once the data is written: a refusal stays one line
    if source == "fer2013":
        result = read_fer2013(raw_dir, data.on_bad_row)
        splits, skipped = result.splits, result.skipped
        meta = {"source": "fer2013", "layout": result.layout, "raw_path": str(result.path)}
        print(f"source: FER2013 ({result.layout}) from {result.path}")
        for layout, path in result.ignored:  # two copies may differ: the user must know which one counts
            what = f"{path}/ also holds FER2013 as image folders (train/ and test/)" if layout == "folders" \
                else f"{path} is FER2013 too"
            warnings.append(f"{what}: ignored, prepare read {result.path} (move the copy you do not want "
                            f"out of {raw_dir}/ to silence this)")
        check_every_class_trains(splits, result.path, result.layout)
        warnings += classes_missing_from_scoring(splits, result.path)
    else:
        splits = generate_synthetic(data.synthetic_train_per_class, params.base.seed)
        skipped = []
        meta = {"source": "synthetic", "seed": params.base.seed,
                "train_per_class": data.synthetic_train_per_class}
        print(f"{BANNER}\nsource: SYNTHETIC demo faces (no FER2013 in {raw_dir}/).\n"
              f"A model trained on them runs the pipeline end to end but is no use on real faces.\n"
              f"For real data put fer2013.csv or the train/ test/ folders in {raw_dir}/fer2013/.\n{BANNER}")
    if skipped:
        print(f"skipped {len(skipped)} bad rows/files (data.on_bad_row: skip); first ones:", file=sys.stderr)
        for line in skipped[:10]:
            print(f"  {line}", file=sys.stderr)
    meta["skipped"] = len(skipped)
    meta = write_prepared(Path(data.prepared_dir), splits, meta)
    elapsed = time.perf_counter() - started
    for split in SPLITS:
        counts = meta["counts"][split]
        print(f"{split:>5}: {sum(counts.values()):>6,}  " + " ".join(f"{k}={v}" for k, v in counts.items()))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {data.prepared_dir}/ in {elapsed:.1f}s")
    return meta


def check_every_class_trains(splits: Splits, path: Path, layout: str) -> None:
    """A class without Training images (a class folder missing from the unpacked archive) would
    train a model that never predicts it, with nothing said: refuse it. An empty split is
    write_prepared's to name."""
    _, y = splits["train"]
    if not all(len(splits[s][1]) for s in SPLITS):
        return
    missing = [name for name, n in class_counts(y).items() if n == 0]
    if missing:
        how = "a train/<class>/ folder each, any case" if layout == "folders" else "Training rows of each label"
        raise DataError(f"{path}: no Training images of {', '.join(missing)}; the model learns all "
                        f"{len(CLASSES)} classes ({', '.join(CLASSES)}), so each needs some ({how})")


def classes_missing_from_scoring(splits: Splits, path: Path) -> list[str]:
    """One line per val/test split without some class. FER2013 has every class in every split, so
    a gap means a damaged or partial copy; nothing later crashes on it (precision, recall and the
    confusion matrix guard empty rows), but that class's F1 counts as 0 in the split's macro-F1.
    Not refused: the split still scores the other classes. Empty splits are write_prepared's to name."""
    lines = []
    for split in ("val", "test"):
        y = splits[split][1]
        missing = [name for name, n in class_counts(y).items() if n == 0] if len(y) else []
        if missing:
            usage = SPLIT_TO_USAGE[split]
            lines.append(f"{path}: no {usage} ({split}) images of {', '.join(missing)}; FER2013 has every class "
                         f"in every split, so this copy looks damaged or partial, and {split}'s macro-F1 counts "
                         f"{'its' if len(missing) == 1 else 'their'} F1 as 0")
    return lines


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    _, params = parse(parser, argv)
    raw_dir = Path(params.data.raw_dir)
    found = find_fer2013(raw_dir)
    misplaced = misplaced_fer2013(raw_dir) if params.data.source != "synthetic" and not found else None
    if misplaced:  # auto would prepare the demo set, saying there is no FER2013
        raise DataError(f"{misplaced}; or set data.source: synthetic for the demo set")
    if params.data.source == "fer2013" and not found:
        raise DataError(
            f"data.source is fer2013 but no dataset is in {params.data.raw_dir}/: put fer2013.csv there "
            f"or unpack the image folders with `mkdir -p {params.data.raw_dir}/fer2013 && tar -xJf "
            f"fer2013-images.tar.xz -C {params.data.raw_dir}/fer2013`"
        )
    check_replaceable(Path(params.data.prepared_dir))  # before minutes of reading, not after
    for line in fileio.recover_folder(Path(params.data.prepared_dir)):  # what an interrupted prepare left
        print(line)
    prepare(params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

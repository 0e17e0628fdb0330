"""Ship a trained FER2013 checkpoint inside the package and print its model-card figures.

    python scripts/ship_model.py models/best.pt            # -> emovision/weights/, reports/pretrained.json
    python scripts/ship_model.py --check                   # re-score the shipped model beside its claims
                                 # -> reports/pretrained.json; exit 1 if one differs by > 0.2 points
    python scripts/ship_model.py models/best.pt --score-only   # PublicTest only (for choosing); writes nothing
    python scripts/ship_model.py models/best.pt --score-only --with-test
                                 # a retrain beside the shipped model's claims, PrivateTest included
    python scripts/ship_model.py models/best.pt --teacher teachers/NAME
                                 # a distillation teacher: model folder, float16 weights, PublicTest figures
    python scripts/ship_model.py --ensemble pretrained teachers/a.pt teachers/b.pt
                                 # -> emovision/weights/ensemble/ ("pretrained-ensemble"),
                                 #    reports/pretrained-ensemble.json (weights stored as float16)

Scores come from the classifier's own `predict_proba` (`predict_proba_both`: without and
with TTA in one pass) on the raw 48x48 crops of
data/prepared/ (which must be FER2013): PublicTest (val) and PrivateTest (test), with and
without flip test-time augmentation, plus macro-F1, per-class F1, the confusion matrix,
parameters, MACs and CPU latency per face (median of repeated batch-1 calls).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emovision import artifact, fileio
from emovision.data.prepared import load_meta, load_split
from emovision.device import torch_threads
from emovision.errors import ConfigError, DataError, cli_main
from emovision.inference import WEIGHTS_DIR, load_artifact, load_classifier
from emovision.metrics import classification_report
from emovision.models import count_macs, count_params

LATENCY_CALLS = 200
# The ensemble's weights ship as float16 (half the MB; probabilities move by about 2e-4) and are
# cast back to float32 on load.
ENSEMBLE_DTYPE = torch.float16
TEACHER_DTYPE = torch.float16  # teachers are committed (issue: results survive the machine): half the MB


def score_all(clf, prepared: Path, splits: tuple[str, ...] = ("val", "test")) -> dict:
    out = {}
    for split in splits:
        x, y = load_split(prepared, split)
        # both ways from one pass (two forwards, not three), at the device's batch (scoring.batch_size_for)
        for tta, probs in zip((False, True), clf.predict_proba_both(x)):
            out[f"{split}{'_tta' if tta else ''}"] = classification_report(y, probs.argmax(1), clf.classes)
    return out


def latency_ms(clf, threads: int) -> float:
    """Median batch-1 latency on `threads` CPU threads (scoring, before it, uses all of torch's)."""
    face = np.random.default_rng(0).integers(0, 256, (1, 48, 48), dtype=np.uint8)
    with torch_threads(threads):
        clf.predict_proba(face)
        times = []
        for _ in range(LATENCY_CALLS):
            t = time.perf_counter()
            clf.predict_proba(face)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def card_tables(scores: dict, classes: tuple[str, ...]) -> str:
    lines = ["| split | TTA | accuracy | macro-F1 |", "|---|---|---|---|"]
    for key, name in (("test", "PrivateTest"), ("val", "PublicTest")):
        for tta in ("", "_tta"):
            r = scores[key + tta]
            lines.append(f"| {name} | {'flip' if tta else 'none'} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |")
    lines += ["", "| class | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    r = scores["test_tta"]
    lines.append("| PrivateTest F1 (TTA) | " + " | ".join(f"{r['per_class'][c]['f1']:.3f}" for c in classes) + " |")
    lines += ["", "Confusion matrix, PrivateTest with TTA (rows: true, columns: predicted):", "",
              "| | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for c, row in zip(classes, r["confusion"]):
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def compare_with_shipped(summary: dict) -> str:
    """This model's accuracies beside the shipped model's claims, in points."""
    claims = artifact.read_spec(WEIGHTS_DIR).metrics
    lines = ["| split | TTA | this model | shipped | difference (points) |", "|---|---|---|---|---|"]
    for split, name in (("test", "PrivateTest"), ("val", "PublicTest")):
        for tta, mine, theirs in (("flip", summary[split], claims[split]),
                                  ("none", summary["no_tta"][split], claims["no_tta"][split])):
            a, b = mine["accuracy"], theirs["accuracy"]
            lines.append(f"| {name} | {tta} | {a:.4f} | {b:.4f} | {100 * (a - b):+.2f} |")
    return "\n".join(lines)


CLAIM_TOLERANCE = 0.002  # 7 of 3,589 faces: scoring on another CPU may move a borderline face or two


def claims_drift(summary: dict, claims: dict) -> list[str]:
    """The accuracies of `summary` (a re-score of the shipped model) that differ from the model
    card's `claims` by more than CLAIM_TOLERANCE, one phrase each: what `--check` exits 1 on."""
    drifted = []
    for split, name in (("test", "PrivateTest"), ("val", "PublicTest")):
        for tta, mine, claimed in (("flip TTA", summary[split], claims[split]),
                                   ("no TTA", summary["no_tta"][split], claims["no_tta"][split])):
            if abs(mine["accuracy"] - claimed["accuracy"]) > CLAIM_TOLERANCE:
                drifted.append(f"{name} {tta} {100 * mine['accuracy']:.2f}% (claimed {100 * claimed['accuracy']:.2f}%)")
    return drifted


def ship_ensemble(args: argparse.Namespace) -> int:
    """Compose `args.ensemble` into one model, score it, and (unless --score-only) ship it."""
    if args.checkpoint is not None or args.check:
        raise DataError("--ensemble takes its models after it; no CHECKPOINT or --check with it")
    if load_meta(args.prepared)["source"] != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    members = [load_artifact(ref) for ref in args.ensemble]  # every reference checked first
    spec, state_dict = artifact.ensemble_of(members, ENSEMBLE_DTYPE)
    with tempfile.TemporaryDirectory() as tmp:
        staged = artifact.save_model_dir(Path(tmp) / "ensemble", spec, state_dict)
        clf = load_classifier(str(staged), "cpu")
        if args.score_only and not args.with_test:  # choosing members: PublicTest alone
            print_val_only(score_all(clf, args.prepared, ("val",)), clf, args.ensemble)
            return 0
        scores = score_all(clf, args.prepared)
        summary = summarise(scores, clf, args.threads)
        summary["members"] = list(args.ensemble)
        print(json.dumps(summary, indent=2))
        print(card_tables(scores, clf.classes))
        spec = spec.replace(metrics={k: summary[k] for k in ("val", "test", "tta", "no_tta")})
        artifact.save_model_dir(staged, spec, state_dict)
        Path("reports").mkdir(exist_ok=True)
        fileio.write_json(Path("reports/pretrained-ensemble.json"), {"summary": summary, "scores": scores})
        artifact.ENSEMBLE_DIR.mkdir(parents=True, exist_ok=True)
        for name in (artifact.WEIGHTS_FILE, artifact.CONFIG_FILE):
            shutil.copy(staged / name, artifact.ENSEMBLE_DIR / name)
    print(f"shipped an ensemble of {', '.join(args.ensemble)} -> {artifact.ENSEMBLE_DIR}", file=sys.stderr)
    return 0


def print_val_only(scores: dict, clf, models: list[str]) -> None:
    print(json.dumps({"models": models, "params": count_params(clf.model),
                      "publictest": scores["val"]["accuracy"], "publictest_tta": scores["val_tta"]["accuracy"]},
                     indent=2))


def ship_teacher(folder: Path, spec: artifact.ModelSpec, state_dict: dict, prepared: Path,
                 device: str = "cpu") -> int:
    """A distillation teacher as a model folder: float16 weights, PublicTest figures only."""
    half = {k: v.to(TEACHER_DTYPE) if v.is_floating_point() else v for k, v in state_dict.items()}
    with tempfile.TemporaryDirectory() as tmp:
        staged = artifact.save_model_dir(Path(tmp) / "teacher", spec, half)
        clf = load_classifier(str(staged), device)
        scores = score_all(clf, prepared, ("val",))
        metrics = {"val": {"accuracy": scores["val_tta"]["accuracy"], "macro_f1": scores["val_tta"]["macro_f1"]},
                   "tta": "hflip", "no_tta": {"val": {"accuracy": scores["val"]["accuracy"],
                                                      "macro_f1": scores["val"]["macro_f1"]}}}
        artifact.save_model_dir(staged, spec.replace(metrics=metrics, dataset="fer2013"), half)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, folder)
    print_val_only(scores, clf, [str(folder)])
    print(f"wrote teacher {folder}", file=sys.stderr)
    return 0


def summarise(scores: dict, clf, threads: int) -> dict:
    return {
        "val": {"accuracy": scores["val_tta"]["accuracy"], "macro_f1": scores["val_tta"]["macro_f1"]},
        "test": {"accuracy": scores["test_tta"]["accuracy"], "macro_f1": scores["test_tta"]["macro_f1"]},
        "tta": "hflip",
        "no_tta": {s: {"accuracy": scores[s]["accuracy"], "macro_f1": scores[s]["macro_f1"]} for s in ("val", "test")},
        "params": count_params(clf.model), "macs": count_macs(clf.model),
        "cpu_latency_ms_batch1": latency_ms(clf, threads), "threads": threads,
    }


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", type=Path)
    p.add_argument("--check", action="store_true",
                   help="re-score the shipped model beside its claims (exit 1 if one differs by more than 0.2 points)")
    p.add_argument("--with-test", action="store_true",
                   help="with --score-only: PrivateTest too (a reproduction check, never for choosing)")
    p.add_argument("--teacher", type=Path, metavar="DIR",
                   help="write CHECKPOINT as a teacher model folder DIR (float16 weights, PublicTest figures)")
    p.add_argument("--ensemble", nargs="+", metavar="MODEL",
                   help="compose these model references into the shipped ensemble (with --score-only: "
                        "score it, write nothing)")
    p.add_argument("--score-only", action="store_true",
                   help="score CHECKPOINT and compare it with the shipped model's claims; write nothing")
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the latency figure")
    args = p.parse_args(argv)
    if args.threads < 1:  # checked before minutes of scoring, not by torch at the latency figure
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.ensemble:
        return ship_ensemble(args)
    if (args.score_only or args.teacher) and (args.check or args.checkpoint is None):
        raise DataError("--score-only and --teacher need a CHECKPOINT (and no --check)")
    if args.check and args.checkpoint is not None:  # it would score the shipped weights under CHECKPOINT's name
        raise DataError(f"--check scores the shipped model ({WEIGHTS_DIR}), not {args.checkpoint}: "
                        f"drop one (python scripts/ship_model.py {args.checkpoint} --score-only scores it)")
    if args.teacher and args.teacher.exists():
        raise DataError(f"--teacher {args.teacher}: already exists; teachers are never overwritten "
                        f"(their outputs are cached under their weights' hash)")
    if load_meta(args.prepared)["source"] != "fer2013":
        raise DataError(f"{args.prepared} is not FER2013; prepare the real dataset first")
    if args.check or args.checkpoint is None:
        clf = load_classifier("pretrained", "cpu")
    else:
        spec, state_dict = artifact.load(args.checkpoint)  # a checkpoint or a model folder
        clf = load_classifier(str(args.checkpoint), "cpu")
    if args.teacher:
        return ship_teacher(args.teacher, spec, state_dict, args.prepared)
    if args.score_only and not args.with_test:
        print_val_only(score_all(clf, args.prepared, ("val",)), clf, [str(args.checkpoint)])
        return 0
    scores = score_all(clf, args.prepared)
    summary = summarise(scores, clf, args.threads)
    print(json.dumps(summary, indent=2))
    print(card_tables(scores, clf.classes))
    if args.score_only:
        print(compare_with_shipped(summary))
        return 0
    Path("reports").mkdir(exist_ok=True)
    Path("reports/pretrained.json").write_text(json.dumps({"summary": summary, "scores": scores}, indent=2) + "\n")
    if args.check or args.checkpoint is None:  # a check: the re-score beside the claims, non-zero when they differ
        print(compare_with_shipped(summary))
        drifted = claims_drift(summary, artifact.read_spec(WEIGHTS_DIR).metrics)
        if drifted:
            print(f"error: the shipped model does not score its claims here: {'; '.join(drifted)} "
                  f"(tolerance {100 * CLAIM_TOLERANCE:.1f} points; is {args.prepared} the full FER2013?)", file=sys.stderr)
            return 1
        print(f"the shipped model scores its claims (within {100 * CLAIM_TOLERANCE:.1f} points)", file=sys.stderr)
        return 0
    if not args.check and args.checkpoint is not None:
        spec = spec.replace(metrics={k: summary[k] for k in ("val", "test", "tta", "no_tta")}, dataset="fer2013")
        with tempfile.TemporaryDirectory() as tmp:
            staged = artifact.save_model_dir(Path(tmp) / "weights", spec, state_dict)
            WEIGHTS_DIR.mkdir(exist_ok=True)
            for name in (artifact.WEIGHTS_FILE, artifact.CONFIG_FILE):
                shutil.copy(staged / name, WEIGHTS_DIR / name)
        print(f"shipped {args.checkpoint} -> {WEIGHTS_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage 3: score the trained model on test and val, and run the promotion gate.

Scores test (PrivateTest) and val (PublicTest), logs the scores into the training run, and
runs the champion/challenger promotion gate (on val: selection never looks at PrivateTest).

Writes <paths.reports>/metrics.json (DVC metrics: accuracy and macro-F1 per split, the
numbers people compare), evaluation.json (per-class precision/recall/F1, TTA, dataset: not a
DVC metric, so `dvc metrics show` stays one readable row), confusion.json (DVC confusion
plot), confusion_matrix.png and per_class_f1.png; every input is checked before any is
replaced, and the five replace the previous five together (`fileio.atomic_files`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from emovision import fileio, plots, progress, promotion, scoring, tracking
from emovision.config import Params
from emovision.data.prepared import load_meta, load_split
from emovision.errors import DataError, cli_main
from emovision.inference import EmotionClassifier, load_classifier
from emovision.promotion import gate_metric
from emovision.metrics import classification_report
from stages import open_store, parse, stage_parser

# inside paths.reports
METRICS_JSON = "metrics.json"
DETAILS_JSON = "evaluation.json"
METRIC_DIGITS = 4  # 0.7056: what people compare, and narrow columns in `dvc exp show`
CONFUSION_JSON = "confusion.json"
CONFUSION_PNG = "confusion_matrix.png"
F1_PNG = "per_class_f1.png"


def score(clf: EmotionClassifier, x: np.ndarray, y: np.ndarray, tta: bool, batch_size: int) -> dict:
    """Classification report of `clf` on raw uint8 crops, through the one prediction path
    (`emovision.scoring`, as in training's validation): the same accuracy whoever asks."""
    pred = clf.predict_proba(x, tta=tta, batch_size=batch_size).argmax(1)
    return {**classification_report(y, pred, clf.classes), "predictions": pred}


def print_table(results: dict, classes: list[str]) -> None:
    print()
    header = f"{'class':>10} | " + " | ".join(f"{split:^20}" for split in results)
    print(header)
    print(f"{'':>10} | " + " | ".join(f"{'prec':>6} {'recall':>6} {'F1':>6}" for _ in results))
    print("-" * len(header))
    for name in classes:
        cells = [results[s]["per_class"][name] for s in results]
        print(f"{name:>10} | " + " | ".join(f"{c['precision']:6.3f} {c['recall']:6.3f} {c['f1']:6.3f}" for c in cells))
    print("-" * len(header))
    print(f"{'accuracy':>10} | " + " | ".join(f"{results[s]['accuracy']:^20.4f}" for s in results))
    print(f"{'macro-F1':>10} | " + " | ".join(f"{results[s]['macro_f1']:^20.4f}" for s in results))


def finished_training(models_dir: Path, version: bool) -> dict:
    """run.json of a training that finished and registered its model, and whose run (and, with
    `version`, registered version) the store in use holds, else a DataError. The store is asked
    first: after a killed training models/ holds a checkpoint but no registered version, which
    `--resume` finishes only while the store still holds the run (not after mlflow.db was deleted)."""
    if not (models_dir / "best.pt").is_file():
        raise DataError(f"no trained model in {models_dir}/ (run `python -m stages.train` first)")
    info = tracking.read_run_file(models_dir, required=True)
    done = tracking.is_finished(info)
    # the store answers: checked before reports/ is rewritten for a run it could not log; an
    # interrupted run is left to train's --resume (not marked KILLED here)
    open_store(keep=None if done else info["run_id"])
    tracking.check_recorded_run(models_dir, info, version=version and done)
    tracking.check_finished(models_dir, info)
    return info


def evaluate(params: Params, models_dir: Path | None = None) -> dict:
    models_dir = Path(params.paths.models) if models_dir is None else models_dir
    reports = Path(params.paths.reports)
    info = finished_training(models_dir, version=params.registry.promote)
    prepared = Path(params.data.prepared_dir)
    meta = load_meta(prepared)
    clf = load_classifier(str(models_dir / "best.pt"), params.base.device)
    tta, bs = params.evaluate.tta, scoring.batch_size_for(clf.device, gpu_batch=params.evaluate.batch_size)
    splits = {s: load_split(prepared, s) for s in ("test", "val")}
    progress.info(f"scoring {clf.info['arch']} on test ({len(splits['test'][1]):,}) and val "
                  f"({len(splits['val'][1]):,} images), TTA {'on' if tta else 'off'}")
    results = {s: score(clf, *splits[s], tta, bs) for s in splits}
    print(f"{clf.info['arch']} on {meta['source']} (test = PrivateTest, val = PublicTest), "
          f"test-time augmentation: {'hflip' if tta else 'none'}")
    print_table(results, list(clf.classes))

    metrics = {s: {k: r[k] for k in ("accuracy", "macro_f1", "per_class")} for s, r in results.items()}
    metrics["tta"] = "hflip" if tta else "none"
    metrics["dataset"] = meta["source"]
    metrics["summary"] = {f"{s}_{short}": round(results[s][k], METRIC_DIGITS)
                          for s in ("test", "val") for k, short in (("accuracy", "acc"), ("macro_f1", "f1"))}
    metrics_json, confusion_png, f1_png = reports / METRICS_JSON, reports / CONFUSION_PNG, reports / F1_PNG
    details_json = reports / DETAILS_JSON
    # One set: DVC records them together, so a failure (a full disk) or Ctrl-C part-way must not
    # leave this run's metrics.json beside the previous run's evaluation.json and plots.
    with fileio.atomic_files(reports) as staged:
        fileio.write_json(staged / DETAILS_JSON, {k: v for k, v in metrics.items() if k != "summary"})
        fileio.write_json(staged / METRICS_JSON, metrics["summary"])
        y_test = splits["test"][1]
        fileio.write_json(staged / CONFUSION_JSON, [
            {"actual": clf.classes[a], "predicted": clf.classes[p]}
            for a, p in zip(y_test.tolist(), results["test"]["predictions"].tolist())], indent=None)
        plots.confusion_matrix(np.array(results["test"]["confusion"]), clf.classes, staged / CONFUSION_PNG,
                               f"PrivateTest ({meta['source']}), acc {results['test']['accuracy']:.3f}")
        plots.per_class_bars({c: results["test"]["per_class"][c]["f1"] for c in clf.classes}, staged / F1_PNG,
                             "PrivateTest F1 per class")

    import mlflow

    with tracking.tracked_run(run_id=info["run_id"]):
        # Named after what they measure: test_acc_tta is PrivateTest accuracy with flip TTA.
        suffix = "_tta" if tta else ""
        flat = {f"{s}_{k}{suffix}": results[s][key] for s in results
                for k, key in (("acc", "accuracy"), ("macro_f1", "macro_f1"))}
        flat.update({f"test_f1_{c}{suffix}": results["test"]["per_class"][c]["f1"] for c in clf.classes})
        # MLflow 3 links a run's metrics to the model the run logged (its model views show them);
        # logging them again with model_id= listed each twice, there and in the run's history.
        mlflow.log_metrics(flat)
        mlflow.set_tag("tta", metrics["tta"])
        for path in (metrics_json, details_json, confusion_png, f1_png):
            mlflow.log_artifact(str(path), "evaluation")
        if params.registry.promote:
            gate(params, info, meta["source"], results["val"]["accuracy"], splits["val"], tta, bs)
    return metrics


def gate(params: Params, info: dict, dataset: str, acc: float, val: tuple, tta: bool, bs: int) -> None:
    """Champion/challenger: both scored on this run's val split (PublicTest), decision stored as tags."""
    name, version = info["model_name"], str(info["model_version"])

    def score_champion(v: str) -> float:
        return score(load_classifier(f"models:/{name}/{v}", params.base.device), *val, tta, bs)["accuracy"]

    decision = promotion.gate(name, version, dataset, acc, params.registry.min_delta, score_champion,
                              gate_metric(tta))
    if decision is None:
        print(f"{name} v{version} is already the champion")
        return
    champ = "" if decision.champion_acc is None else f", champion v{decision.champion_version} val acc {decision.champion_acc:.4f}"
    print(f"promotion: {name} v{version} {'PROMOTED to Production (@champion)' if decision.promote else 'not promoted'}"
          f" — {decision.reason} (challenger {gate_metric(tta)} {acc:.4f}{champ})")


@cli_main
def main(argv: list[str] | None = None) -> int:
    _, params = parse(stage_parser(__doc__.splitlines()[0]), argv)
    evaluate(params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

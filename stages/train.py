"""Stage 2: train a model on data/prepared/, track it in MLflow and register it.

Writes models/best.pt, models/last.pt (both self-describing, weights_only-loadable),
models/run.json (MLflow run id and registered version, read by later stages),
reports/train_history.csv (DVC plots) and reports/training_curves.png.
`--resume` continues an interrupted run from models/last.pt, in the same MLflow run.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from emovision import plots, tracking
from emovision.config import Params
from emovision.errors import cli_main
from emovision.training import fit, load_checkpoint, load_train_val
from stages import parse, stage_parser

MODELS_DIR = Path("models")
RUN_FILE = MODELS_DIR / "run.json"
HISTORY_CSV = Path("reports/train_history.csv")
CURVES_PNG = Path("reports/training_curves.png")


def write_history(history: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def train(params: Params, resume: bool = False, models_dir: Path = MODELS_DIR) -> dict:
    meta, train_set, val_set = load_train_val(params)
    print(f"training {params.model.name} on {meta['source']} ({len(train_set):,} train / "
          f"{len(val_set):,} val) on {train_set.x.device}")

    run_file = models_dir / RUN_FILE.name
    run_id = None
    if resume and (models_dir / "last.pt").is_file() and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
    elif not resume:
        for stale in ("last.pt", "best.pt"):  # a fresh run must not resume or register old weights
            (models_dir / stale).unlink(missing_ok=True)
    tracking.setup()
    import mlflow

    with tracking.tracked_run(run_name=f"train-{params.model.name}", run_id=run_id,
                              tags={**tracking.run_tags(meta), "stage": "train"}) as run:
        models_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"run_id": run.info.run_id}) + "\n")
        if run_id is None:
            mlflow.log_params(params.flat())
            mlflow.log_params({"dataset.source": meta["source"],
                               **{f"dataset.{split}_count": sum(c.values())
                                  for split, c in meta["counts"].items()}})
            mlflow.log_dict(meta, "dataset_meta.json")

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)

        result = fit(params, train_set, val_set, meta["classes"], out_dir=models_dir, resume=resume,
                     on_epoch=log_epoch, extra={"dataset": meta["source"]})
        write_history(result["history"], HISTORY_CSV)
        plots.training_curves(result["history"], CURVES_PNG)
        mlflow.log_artifact(str(CURVES_PNG))
        mlflow.log_artifact(str(HISTORY_CSV))
        best = load_checkpoint(models_dir / "best.pt")
        mlflow.log_metrics({"best_val_acc": result["best_val_acc"], "best_epoch": result["best_epoch"]})
        mlflow.set_tag("stopped", result["stopped"])
        source = tracking.log_model(best)
        version = tracking.register_model(
            params.registry.model_name, source, run.info.run_id,
            tags={"dataset": meta["source"], "val_acc": f"{result['best_val_acc']:.4f}",
                  "arch": params.model.name})
        info = {"run_id": run.info.run_id, "model_name": params.registry.model_name,
                "model_version": version, "dataset": meta["source"],
                "best_val_acc": result["best_val_acc"], "best_epoch": result["best_epoch"]}
        run_file.write_text(json.dumps(info, indent=2) + "\n")
    print(f"best val_acc {result['best_val_acc']:.4f} at epoch {result['best_epoch']}; "
          f"registered {params.registry.model_name} version {version} (run {run.info.run_id})")
    return info


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true",
                        help="continue from models/last.pt (same MLflow run) instead of starting over")
    args, params = parse(parser, argv)
    train(params, resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

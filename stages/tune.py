"""Tune train.lr and model.dropout with Optuna: `python -m stages.tune [--n-trials N] [--apply]`.

Each trial trains `tune.epochs` epochs on data/prepared/ and is scored on val (PublicTest).
The study is resumable (run the same command again) and shareable (`--storage` with a
PostgreSQL/MySQL URL or a journal file for several workers). Results: reports/tune/.
"""
from __future__ import annotations

from pathlib import Path

import optuna

from emovision import tracking, tuning
from emovision.config import Params
from emovision.errors import ConfigError, cli_main
from emovision.training import load_train_val
from stages import parse, stage_parser

OUT_DIR = Path("reports/tune")
TOP_ROWS = 8


def tune(params: Params, n_trials: int, timeout: int, epochs: int, study_name: str, storage_url: str,
         n_jobs: int, pruner: optuna.pruners.BasePruner | None = None, params_path: Path | None = None,
         apply: bool = False) -> dict:
    storage = tuning.open_storage(storage_url)
    study = tuning.load_study(params, storage, study_name, pruner or tuning.make_pruner(params.tune.pruner))
    meta, train, val = load_train_val(params)
    before = len(study.trials)
    print(f"study '{study_name}' in {storage_url}: {before} earlier trials; running {n_trials} more "
          f"({epochs} epochs each on {meta['source']})")
    exp_id = tracking.setup()
    import mlflow

    with tracking.tracked_run(run_name=f"tune-{study_name}",
                              tags={**tracking.run_tags(meta), "stage": "tune", "study": study_name}) as run:
        mlflow.log_params({"tune.n_trials": n_trials, "tune.epochs": epochs, "tune.study_name": study_name,
                           **{f"tune.{k}": getattr(params.tune, k) for k in
                              ("lr_low", "lr_high", "dropout_low", "dropout_high", "pruner")}})
        logger = tuning.TrialLogger(exp_id, run.info.run_id)
        objective = tuning.make_objective(params, train, val, meta["classes"], epochs, logger)
        study.optimize(objective, n_trials=n_trials, timeout=timeout or None, n_jobs=n_jobs,
                       catch=(RuntimeError, ValueError))
        rows = tuning.trials_table(study)
        csv_path = tuning.write_csv(rows, OUT_DIR / "trials.csv")
        pngs = tuning.plot_study(rows, OUT_DIR)
        if not any(r["state"] == "COMPLETE" for r in rows):
            raise ConfigError(f"no trial of study '{study_name}' completed; see the FAILED runs in MLflow")
        best = tuning.write_best(study, OUT_DIR / "best_params.json")
        mlflow.log_params({f"best.{k}": best[k] for k in tuning.TUNED_KEYS})
        mlflow.log_metric("best_val_acc", best["val_acc"])
        for path in (csv_path, OUT_DIR / "best_params.json", *pngs):
            mlflow.log_artifact(str(path))
    print_summary(rows, best)
    if apply:
        tuning.apply_to_params_file(params_path, {k: best[k] for k in tuning.TUNED_KEYS})
        print(f"wrote train.lr={best['train.lr']:.6g} model.dropout={best['model.dropout']:.6g} into "
              f"{params_path}; `dvc repro` now trains the tuned model")
    return best


def print_summary(rows: list[dict], best: dict) -> None:
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -r["val_acc"])
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"\n{'trial':>6} {'val_acc':>8} {'train.lr':>10} {'dropout':>8}")
    for r in done[:TOP_ROWS]:
        print(f"{r['number']:>6} {r['val_acc']:8.4f} {r['train.lr']:10.3g} {r['model.dropout']:8.3f}")
    print(f"\n{len(rows)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()))
    print(f"best: trial {best['trial']} val_acc {best['val_acc']:.4f}  train.lr {best['train.lr']:.4g}  "
          f"model.dropout {best['model.dropout']:.3f}")
    print(f"next: python -m stages.tune --apply   (or: dvc exp run -S train.lr={best['train.lr']:.4g} "
          f"-S model.dropout={best['model.dropout']:.3f})")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, help="trials to run now (default: tune.n_trials)")
    parser.add_argument("--timeout", type=int, help="stop starting trials after N seconds (default: tune.timeout)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: tune.epochs)")
    parser.add_argument("--study-name", help="study to create or resume (default: tune.study_name)")
    parser.add_argument("--storage", help="Optuna storage URL: sqlite:///…, postgresql://…, mysql://…, "
                        "or journal:///path/to/study.log (default: sqlite:///<project>/optuna.db)")
    parser.add_argument("--n-jobs", type=int, help="parallel trials in this process (default: tune.n_jobs)")
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], help="default: tune.pruner")
    parser.add_argument("--apply", action="store_true",
                        help="write the best train.lr and model.dropout into the params file")
    args, params = parse(parser, argv)
    overrides = {f"tune.{k}": v for k, v in (("n_trials", args.n_trials), ("timeout", args.timeout),
                                            ("epochs", args.epochs), ("study_name", args.study_name),
                                            ("storage", args.storage), ("n_jobs", args.n_jobs),
                                            ("pruner", args.pruner)) if v is not None}
    params = params.replace(**overrides)  # validated like the file
    t = params.tune
    if t.n_trials < 1:
        raise ConfigError(f"--n-trials must be >= 1, got {t.n_trials}")
    tune(params, t.n_trials, t.timeout, t.epochs, t.study_name, t.storage or tuning.default_storage(),
         t.n_jobs, params_path=Path(args.params), apply=args.apply)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tune train.lr and model.dropout with Optuna: `python -m stages.tune [--n-trials N] [--apply]`.

Each trial trains `tune.epochs` epochs on data/prepared/ and is scored on val (PublicTest).
The study is resumable (run the same command again) and shareable: point several workers
at one `--storage` (a PostgreSQL/MySQL URL across machines; a SQLite file or
`journal:///abs/path/study.log` between processes on one machine). Results: <paths.reports>/tune/.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Callable

import optuna

from emovision import fileio, progress, tracking, tuning
from emovision.config import DEFAULT_PARAMS, Params
from emovision.device import torch_threads
from emovision.errors import ConfigError, DataError, cli_main, shown_uri
from emovision.training import describe_train_set, load_train_val
from stages import open_store, parse, stage_parser

OUT_DIR = "tune"  # inside paths.reports
TOP_ROWS = 8
# The storage URL when --storage is not given (before tune.storage): Optuna's own CLI reads it too, and a
# password kept there is in no command line (`ps`, shell history), no params file and no printed command.
STORAGE_ENV = "OPTUNA_STORAGE"


def tune(params: Params, pruner: optuna.pruners.BasePruner | None = None,
         params_path: Path | None = None, apply: bool = False, out_dir: Path | None = None,
         storage_from: str | None = None) -> dict:
    """Run `tune.n_trials` more trials of study `tune.study_name` (0: none, just report),
    log them to MLflow, write reports; with `apply`, write the best values into
    `params_path`. `storage_from`: where tune.storage came from ("--storage", STORAGE_ENV;
    None: the params file), for the printed command. Returns best_params.json's content."""
    t = params.tune
    out_dir = Path(params.paths.reports) / OUT_DIR if out_dir is None else out_dir
    url = t.storage or tuning.default_storage()
    missing = tuning.storage_file(url)
    if t.n_trials == 0 and missing is not None and not missing.exists():
        # opening the storage makes the file: a report on a mistyped path left an empty one behind
        raise ConfigError(f"no study '{t.study_name}' in this storage (it has: none; {missing} does not "
                          f"exist, and was not made); check the storage path, or run trials first")
    try:
        storage = tuning.open_storage(url)
    except ConfigError as err:
        if storage_from != STORAGE_ENV:
            raise
        # set outside the project, perhaps long ago or for another tool: say where it came from
        raise ConfigError(f"{STORAGE_ENV}: {err}") from None
    study = None
    try:  # a store locked or gone midway: one line, its trials failed, the study resumable
        if t.n_trials == 0:
            study = tuning.existing_study(storage, t.study_name)
            print(f"study '{t.study_name}' in {shown_uri(url)}: {len(study.trials)} trials; no new ones")
            rows = tuning.trials_table(study)
            best = write_reports(study, rows, out_dir)
        else:  # the data and the MLflow store first: either refused after the study was made left it empty
            data, exp_id = load_train_val(params), open_store()
            study = tuning.load_study(params, storage, pruner)
            rows, best = run_trials(params, study, url, out_dir, data, exp_id)
    except Exception as err:
        message = tuning.stopped_by_store(err, url, study)
        if message is None:
            raise
        raise DataError(message) from None
    apply_cmd, first = apply_command(t.study_name, t.storage, storage_from, params_path)
    print_summary(rows, best, out_dir / "best_params.json", None if apply else apply_cmd, first)
    hint = tuning.running_trials_hint(url, t.study_name, rows)
    if hint:
        print(hint)
    if apply:
        tuning.apply_to_params_file(params_path, {k: best[k] for k in tuning.TUNED_KEYS})
        print(f"wrote train.lr={tuning.yaml_float(best['train.lr'])} "
              f"model.dropout={tuning.yaml_float(best['model.dropout'])} into {params_path}; "
              f"`dvc repro` now trains with them")
    return best


def run_trials(params: Params, study: optuna.Study, url: str, out_dir: Path, data: tuple, exp_id: str
               ) -> tuple[list[dict], dict]:
    """The trials of one invocation under one MLflow run, each trial a nested run; `data` is
    load_train_val's, `exp_id` open_store's."""
    t = params.tune
    meta, train, val = data
    # trials tune the model train builds on this data: on the demo set, demo.width's
    width = params.for_dataset(meta["source"]).model.width
    if width != params.model.width:
        print(f"demo set: model.width {params.model.width} -> {width} in every trial, as train builds it "
              f"(the demo section's caps)")
        params = params.replace(**{"model.width": width})
    if params.train.warmup_epochs > t.epochs:  # each trial's run is cut to fit (Params.with_epochs): say so
        print(f"tune.epochs {t.epochs}: train.warmup_epochs {params.train.warmup_epochs:g} is cut to {t.epochs} "
              f"in every trial, so a trial is all warm-up and never decays its lr; raise tune.epochs "
              f"or lower the warm-up to tune the schedule train runs")
    print(f"study '{t.study_name}' in {shown_uri(url)}: {len(study.trials)} earlier trials; "
          f"running {t.n_trials} more ({t.epochs} epochs each, {t.n_jobs} at a time, on {meta['source']} "
          f"{describe_train_set(len(train), params.train)} / {len(val):,} val)")
    import mlflow

    with tracking.tracked_run(run_name=f"tune-{t.study_name}",
                              tags={**tracking.run_tags(meta), "stage": "tune", "study": t.study_name}) as run:
        mlflow.log_params({"tune.storage": shown_uri(url),
                           **{f"tune.{k}": getattr(t, k) for k in
                              ("study_name", "n_trials", "timeout", "epochs", "n_jobs", "pruner",
                               "lr_low", "lr_high", "dropout_low", "dropout_high")},
                           "model.name": params.model.name, "model.width": params.model.width})
        logger = tuning.TrialLogger(exp_id, run.info.run_id)
        objective = tuning.make_objective(params, train, val, meta["classes"], logger)
        threads = tuning.threads_per_trial(t.n_jobs, params.train.threads) if t.n_jobs > 1 else None
        if threads:
            print(f"{t.n_jobs} trials at a time: {threads} torch thread{'s' if threads > 1 else ''} each")
        # a failed trial (CUDA out of memory, NaN loss) is recorded as FAIL and the study goes on
        try:
            with torch_threads(threads):
                study.optimize(objective, n_trials=t.n_trials, timeout=t.timeout or None, n_jobs=t.n_jobs,
                               catch=(RuntimeError, ValueError), callbacks=[print_trial])
        except KeyboardInterrupt:  # no trial of this run may stay RUNNING (the next run would wait on it)
            tuning.fail_interrupted_trials(study)
            raise
        rows = tuning.trials_table(study)
        mlflow.log_metrics({f"trials_{s.lower()}": sum(r["state"] == s for r in rows)
                            for s in ("COMPLETE", "PRUNED", "FAIL")})
        # the trial table and plots are worth keeping even when nothing completed; logged from
        # this worker's own copies, which another worker sharing the study cannot touch
        best = write_reports(study, rows, out_dir, log=lambda path: mlflow.log_artifact(str(path)))
        mlflow.log_params({f"best.{k}": best[k] for k in tuning.TUNED_KEYS} | {"best.trial": best["trial"]})
        mlflow.log_metric("best_val_acc", best["val_acc"])
    return rows, best


def write_reports(study: optuna.Study, rows: list[dict], out_dir: Path,
                  log: Callable[[Path], object] | None = None) -> dict:
    """trials.csv and the PNGs, then best_params.json (an error when no trial completed), replacing
    the previous set together: workers sharing a study end at about the same time, and one that
    removed best_params.json while writing the rest made the other's read of it fail. `log` is given
    each file before it replaces its namesake (MLflow artifacts)."""
    with fileio.atomic_files(out_dir) as staged:
        tuning.write_csv(rows, staged / "trials.csv")
        tuning.plot_study(rows, staged)
        done = tuning.best_row(rows) is not None
        best = tuning.write_best(study, staged / "best_params.json") if done else None
        for path in sorted(staged.iterdir()) if log else ():
            log(path)
    if best is None:
        (out_dir / "best_params.json").unlink(missing_ok=True)  # never leave a stale best behind
        pruned, failed = (sum(r["state"] == s for r in rows) for s in ("PRUNED", "FAIL"))
        raise ConfigError(f"no trial of study '{study.study_name}' has completed ({pruned} pruned, "
                          f"{failed} failed); see the trial runs in MLflow, or run more with --pruner none")
    return best


def print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"val_acc {trial.value:.4f}" if trial.value is not None else ""
    took = f"{trial.duration.total_seconds():.1f}s" if trial.duration else ""
    progress.info(f"trial {trial.number:>3} {trial.state.name:<8} {value:<14} "
                  f"lr {trial.params.get('train.lr', 0):.3g}  dropout {trial.params.get('model.dropout', 0):.3f}  "
                  f"({len(trial.intermediate_values)} epochs, {took})")


def apply_command(study_name: str, storage: str, storage_from: str | None,
                  params_path: Path | None) -> tuple[str, str]:
    """The command that applies the study's best, to paste as printed, and what to do first if anything
    ("" if nothing). A storage URL with credentials is printed masked (shown_uri) and a masked one
    cannot connect, so such a URL is left where it came from, the params file or STORAGE_ENV; one
    given by --storage the user puts into STORAGE_ENV."""
    words = ["python -m stages.tune --n-trials 0 --apply"]
    if params_path and str(params_path) != DEFAULT_PARAMS:
        words.append(f"--params {shlex.quote(str(params_path))}")
    words.append(f"--study-name {shlex.quote(study_name)}")
    secret = bool(storage) and shown_uri(storage) != storage  # it has credentials, which are not printed
    if storage and not secret:
        words.append(f"--storage {shlex.quote(storage)}")
    first = ""
    if secret and storage_from == "--storage":
        first = f"first set {STORAGE_ENV} to the --storage URL: its credentials are not printed"
    return " ".join(words), first


def print_summary(rows: list[dict], best: dict, best_path: Path, apply_cmd: str | None, first: str = "") -> None:
    """Top trials, counts by state, the best, and (unless applied) the commands to use it."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -r["val_acc"])
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    print(f"\ntop trials\n{'trial':>6} {'val_acc':>8} {'train.lr':>10} {'dropout':>8}")
    for r in done[:TOP_ROWS]:
        print(f"{r['number']:>6} {r['val_acc']:8.4f} {r['train.lr']:10.3g} {r['model.dropout']:8.3f}")
    print(f"\n{len(rows)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items() if n))
    print(f"best: trial {best['trial']}  val_acc {best['val_acc']:.4f}  train.lr {best['train.lr']:.4g}  "
          f"model.dropout {best['model.dropout']:.3f}  ({best_path})")
    if apply_cmd:
        print(f"next: {apply_cmd}   ({first + '; ' if first else ''}writes them into the params file)\n"
              f"  or: dvc exp run -S train.lr={tuning.yaml_float(best['train.lr'])} "
              f"-S model.dropout={tuning.yaml_float(best['model.dropout'])}   (an experiment; params.yaml untouched)")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, help="trials to run now; 0 reports (and with --apply, "
                        "applies) the study as it is (default: tune.n_trials)")
    parser.add_argument("--timeout", type=int, help="stop starting trials after N seconds (default: tune.timeout)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: tune.epochs)")
    parser.add_argument("--study-name", help="study to create or resume (default: tune.study_name)")
    parser.add_argument("--storage", help="Optuna storage: sqlite:///abs/path.db, postgresql://user@host/db, "
                        "mysql://…, or a journal file journal:///abs/path/study.log (also any path ending "
                        "in .log or .journal); default: $OPTUNA_STORAGE, else tune.storage, else "
                        "sqlite:///<project root>/optuna.db")
    parser.add_argument("--n-jobs", type=int, help="parallel trials in this process (default: tune.n_jobs)")
    parser.add_argument("--pruner", choices=["median", "hyperband", "none"], help="default: tune.pruner")
    parser.add_argument("--apply", action="store_true",
                        help="write the best train.lr and model.dropout into the params file")
    args, params = parse(parser, argv)
    storage_from = "--storage" if args.storage is not None else STORAGE_ENV if os.environ.get(STORAGE_ENV) else None
    if storage_from == STORAGE_ENV:
        args.storage = os.environ[STORAGE_ENV]
    for key in ("n_trials", "timeout", "epochs", "study_name", "storage", "n_jobs", "pruner"):
        value = getattr(args, key)
        if value is not None:  # validated like the file, one flag at a time so the line names it
            source = storage_from if key == "storage" else f"--{key.replace('_', '-')}"
            params = params.replace(source=source, **{f"tune.{key}": value})
    tune(params, params_path=Path(args.params), apply=args.apply, storage_from=storage_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Optuna tuning of `train.lr` and `model.dropout`, one short training run per trial.

The study lives in its own storage (default `sqlite:///<project root>/optuna.db`, never
mlflow.db). SQL storages run a heartbeat, so a trial left RUNNING by a killed worker is
failed and re-queued; any number of workers may share one storage (PostgreSQL or MySQL
across machines, a journal file on one machine). Every trial is a nested MLflow run.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import warnings

import optuna
from optuna.distributions import FloatDistribution

from emovision import tracking
from emovision.config import Params
from emovision.errors import ConfigError
from emovision.training import SplitTensors, fit

HEARTBEAT_S = 20  # a running trial proves it is alive this often
GRACE_S = 60  # ...and is declared dead (FAIL, then retried) after this long without a beat
MAX_RETRY = 2  # re-queue a dead trial at most this often
JOURNAL_PREFIX = "journal:///"
SEARCH_SPACE_ATTR = "search_space"
TUNED_KEYS = ("train.lr", "model.dropout")


def default_storage() -> str:
    return f"sqlite:///{tracking.project_root() / 'optuna.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL; `journal:///path` or a *.log / *.journal path is a journal file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeat and journal APIs are marked experimental; they are the documented way to do this
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if url.startswith(JOURNAL_PREFIX) or url.endswith((".log", ".journal")):
            path = url[len(JOURNAL_PREFIX) - 1:] if url.startswith(JOURNAL_PREFIX) else url
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except Exception as err:  # SQLAlchemy and drivers raise many kinds for a bad URL
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot open Optuna storage {url!r}: {first[:200]}") from None


def search_space(p: Params) -> dict[str, FloatDistribution]:
    return {"train.lr": FloatDistribution(p.tune.lr_low, p.tune.lr_high, log=True),
            "model.dropout": FloatDistribution(p.tune.dropout_low, p.tune.dropout_high)}


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    # Prune after the first epoch once 3 trials have finished: trials are short.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def load_study(params: Params, storage: optuna.storages.BaseStorage, study_name: str,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create or resume the study; refuse one recorded with another search space."""
    space = {k: {"low": d.low, "high": d.high, "log": d.log} for k, d in search_space(params).items()}
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True, pruner=pruner,
        sampler=optuna.samplers.TPESampler(seed=params.base.seed, n_startup_trials=5))
    recorded = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if recorded is None:
        study.set_user_attr(SEARCH_SPACE_ATTR, space)
    elif recorded != space:
        diff = ", ".join(f"{k} {recorded.get(k)} -> {space[k]}" for k in space if recorded.get(k) != space[k])
        raise ConfigError(f"study '{study_name}' exists with another search space ({diff}); "
                          f"use --study-name NEW or restore the ranges in the tune section")
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # trials of killed workers: FAIL, re-queued
    return study


@dataclass
class TrialLogger:
    """Each trial as a nested MLflow run under the tune run (thread-safe client calls)."""

    experiment_id: str
    parent_run_id: str

    def start(self, trial: optuna.Trial, values: dict[str, float]) -> str:
        import mlflow

        client = mlflow.MlflowClient()
        run = client.create_run(self.experiment_id, run_name=f"trial-{trial.number}",
                                tags={"mlflow.parentRunId": self.parent_run_id,
                                      "trial_number": str(trial.number)})
        for key, value in values.items():
            client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    @staticmethod
    def epoch(run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            client.log_metric(run_id, key, metrics[key], step=epoch)

    @staticmethod
    def end(run_id: str, state: str) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(run_id, "trial_state", state)
        client.set_terminated(run_id, "FINISHED" if state != "FAIL" else "FAILED")


def make_objective(params: Params, train: SplitTensors, val: SplitTensors, classes: list[str],
                   epochs: int, logger: TrialLogger | None) -> Callable[[optuna.Trial], float]:
    space = search_space(params)

    def objective(trial: optuna.Trial) -> float:
        values = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()}
        trial_params = params.replace(**values, **{"train.epochs": epochs, "train.patience": 0})
        run_id = logger.start(trial, values) if logger else None
        best = {"acc": 0.0}

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            if run_id:
                logger.epoch(run_id, epoch, metrics)
            best["acc"] = max(best["acc"], metrics["val_acc"])
            trial.report(metrics["val_acc"], epoch)
            return trial.should_prune()

        state = "FAIL"
        try:
            result = fit(trial_params, train, val, classes, on_epoch=on_epoch)
            if result["stopped"] == "pruned":
                state = "PRUNED"
                raise optuna.TrialPruned(f"pruned at epoch {result['epochs_run']}")
            state = "COMPLETE"
            return result["best_val_acc"]
        finally:
            if run_id:
                logger.end(run_id, state)

    return objective


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, "val_acc": t.value,
                     "train.lr": t.params.get("train.lr"), "model.dropout": t.params.get("model.dropout"),
                     "epochs": len(t.intermediate_values)})
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_study(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Optimisation history and accuracy against lr and dropout (matplotlib PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter([r["number"] for r in done], [r["val_acc"] for r in done], label="complete")
    best, running = [], -math.inf
    for r in done:
        running = max(running, r["val_acc"])
        best.append(running)
    ax.plot([r["number"] for r in done], best, color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel="val accuracy", title="Optimisation history")
    ax.legend()
    paths = [out_dir / "optimization_history.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    for key, log in (("train.lr", True), ("model.dropout", False)):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.scatter([r[key] for r in done], [r["val_acc"] for r in done], label="complete")
        if pruned:  # pruned trials have no final value: show them on the floor
            floor = min((r["val_acc"] for r in done), default=0.0)
            ax.scatter([r[key] for r in pruned], [floor] * len(pruned), marker="x", color="gray", label="pruned")
        if log:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel="val accuracy", title=f"val accuracy vs {key}")
        ax.legend()
        path = out_dir / f"accuracy_vs_{key.split('.')[1]}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


_KEY_LINE = r"^(?P<indent>[ \t]+){key}:(?P<space>[ \t]*)(?P<value>[^#\n]*?)(?P<tail>[ \t]*(#.*)?)$"


def apply_to_params_file(path: Path, values: dict[str, float]) -> None:
    """Set `section.key` values in a params file, leaving every other byte as it was
    (comments, order, alignment); written atomically."""
    text = Path(path).read_text()
    for dotted, value in values.items():
        section, key = dotted.split(".")
        new_value = f"{value:.6g}"
        sec = re.search(rf"^{re.escape(section)}:[ \t]*(#.*)?$", text, re.M)
        if sec is None:  # a params file may leave sections to their defaults
            text = text.rstrip("\n") + f"\n{section}:\n  {key}: {new_value}  # set by stages.tune --apply\n"
            continue
        end = re.search(r"^\S", text[sec.end():], re.M)
        block_end = sec.end() + (end.start() if end else len(text) - sec.end())
        block = text[sec.end():block_end]
        line = re.search(_KEY_LINE.format(key=re.escape(key)), block, re.M)
        if line is None:
            text = text[:sec.end()] + f"\n  {key}: {new_value}  # set by stages.tune --apply" + text[sec.end():]
            continue
        # keep the comment in its column when the new value is not longer than the old one
        pad = max(1, len(line["value"]) + len(line["tail"]) - len(line["tail"].lstrip()) - len(new_value))
        tail = line["tail"].lstrip()
        new_line = f"{line['indent']}{key}:{line['space']}{new_value}" + (" " * pad + tail if tail else "")
        block = block[:line.start()] + new_line + block[line.end():]
        text = text[:sec.end()] + block + text[block_end:]
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_best(study: optuna.Study, path: Path) -> dict[str, Any]:
    best = study.best_trial
    data = {**best.params, "val_acc": best.value, "trial": best.number, "study": study.study_name,
            "n_trials": len(study.trials)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data

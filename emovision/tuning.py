"""Optuna tuning of `train.lr` and `model.dropout`, one short training run per trial.

The study lives in its own storage (default `sqlite:///<project root>/optuna.db`, never
mlflow.db) and any number of workers may share it: a PostgreSQL or MySQL URL across
machines, a SQLite file or a journal file (`journal:///abs/path/study.log`, or any path
ending in .log / .journal) between processes on one machine. A trial left RUNNING by a
killed worker is failed and re-queued with the same params, and the MLflow runs the kill
left RUNNING are marked KILLED: at once when the worker ran on this machine (each trial
records its owner process, and a new worker sees it is gone), else by the heartbeat of SQL
storages, a minute later; journal files have no heartbeat, so another machine's such trial
stays RUNNING there (the summary says how to fail it: running_trials_hint).
A study remembers its search space and epochs per trial and refuses to mix in trials run
with others. Every trial is a nested MLflow run under the invocation's run.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import random
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from emovision import fileio, tracking
from emovision.config import OPTUNA_DB, Params
from emovision.device import cpu_threads
from emovision.errors import ConfigError, DataError, shown_uri
from emovision.training import SplitTensors, fit

HEARTBEAT_S = 20  # a running trial proves it is alive this often
GRACE_S = 60  # ...and is declared dead (FAIL, then retried) after this long without a beat
MAX_RETRY = 2  # re-queue a dead trial at most this often
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the results
PRUNE_STARTUP_TRIALS = 5  # the median pruner waits for this many finished trials...
PRUNE_WARMUP_EPOCHS = 2  # ...and never judges epoch 1, all of it lr warm-up (train.warmup_epochs)
STORAGE_INIT_ATTEMPTS = 5  # workers starting together on a new database race to create it
# a SQLite storage waits this long on another process's write lock (MLflow's store waits as
# long): a query in a sqlite3 shell passes; a lock held longer stops the run, in one line
SQLITE_WAIT_S = 20
JOURNAL_PREFIX = "journal:///"
JOURNAL_SUFFIXES = (".log", ".journal")
SEARCH_SPACE_ATTR = "search_space"
EPOCHS_ATTR = "epochs_per_trial"
TUNED_KEYS = ("train.lr", "model.dropout")
# what SQLite (and MySQL, PostgreSQL) say when another process held a lock past their wait
LOCKED_MESSAGES = ("database is locked", "database table is locked", "Lock wait timeout exceeded",
                   "lock timeout")
LOCKED = "is locked by another process"
# a trial's user attrs: its MLflow run and the invocation's, ended KILLED when the trial is found dead
RUN_ATTRS = ("mlflow_run_id", "mlflow_parent_run_id")
OWNER_ATTR = "owner"  # a trial's user attr: the worker process running it (fileio.this_process())
LOGGED_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


# ---------------------------------------------------------------- storage and study


def default_storage() -> str:
    return f"sqlite:///{tracking.project_root() / OPTUNA_DB}"


def is_journal(url: str) -> bool:
    """`journal:///path`, or a plain path (no scheme) ending .log / .journal: `sqlite:///x.log`
    is a SQLite file, not a journal in a folder named `sqlite:`."""
    return url.startswith(JOURNAL_PREFIX) or ("://" not in url and url.endswith(JOURNAL_SUFFIXES))


def _sqlite_url(url: str):
    """`url` parsed by SQLAlchemy (`sqlalchemy.engine.URL`) when it names an SQLite database, else
    None (a journal, another database, or not a URL: open_storage says so)."""
    if is_journal(url):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    return parsed if parsed.get_backend_name() == "sqlite" else None


def storage_file(url: str) -> Path | None:
    """The local file a storage URL names (a journal file, a SQLite database), else None."""
    if is_journal(url):
        if url.startswith(JOURNAL_PREFIX):  # journal:////abs/path (an absolute path pasted after ///) too
            return Path("/" + url[len(JOURNAL_PREFIX):].lstrip("/"))
        return Path(url)
    parsed = _sqlite_url(url)
    database = None if parsed is None else parsed.database
    if database in (None, "", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def in_memory(url: str) -> bool:
    """Whether `url` is an SQLite database in memory (`sqlite://`, `sqlite:///:memory:`, a `file:`
    URI with mode=memory), which ends with the process: trials ran, then the study was gone."""
    parsed = _sqlite_url(url)
    if parsed is None:
        return False
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return True
    # a `file:` name is a URI only with uri=true (else it names a file); SQLite's URI keeps a database
    # in memory by the name :memory: (file::memory:?cache=shared, its documented way to share one)
    # or by mode=memory, a query parameter: in the path it is a folder's name (file:mode=memory/x.db)
    uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
    return uri and database.startswith("file:") and (
        database.removeprefix("file:") == ":memory:" or parsed.query.get("mode") == "memory")


class QuietStops(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C or by a store that is locked or gone as a failure,
    with its traceback (20 lines and more), and Optuna and MLflow log each locked query; the
    stage says `interrupted`, or the store's problem, in one line instead. Other failures are
    logged as before."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: set[str] = set()  # trial numbers, from Optuna's two lines per failure

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        quiet = (isinstance(error, KeyboardInterrupt) or _is_locked(record.getMessage())
                 or (error is not None and _database_error(error) is not None))
        trial = re.match(r"Trial (\d+) failed", record.getMessage())
        if trial is None:
            return not quiet
        if quiet:
            self.stopped.add(trial[1])
        return trial[1] not in self.stopped


QUIETED_LOGGERS = ("optuna.study._optimize",  # where Optuna logs failed trials
                   "optuna.storages._rdb.storage",  # a query it retries another way (locked first)
                   "mlflow.store.db.utils")  # where MLflow logs a database error it raises


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL: `journal:///path` or a *.log / *.journal path is a
    journal file; anything else is a SQLAlchemy URL (sqlite:///, postgresql://, mysql://)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in QUIETED_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, QuietStops) for f in log.filters):
            log.addFilter(QuietStops())
    # heartbeat, fail_stale_trials and journal files are marked experimental; they are the
    # documented way to recover from killed workers and to share a study without a server
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    _check_storage_folder(url)
    if in_memory(url):
        raise ConfigError(f"Optuna storage {shown_uri(url)!r} is an in-memory SQLite database: the study would be "
                          f"lost when tune ends; name a file, sqlite:///abs/path.db")
    attempts, started = 0, time.monotonic()
    while True:
        attempt_started = time.monotonic()
        try:
            return _open_storage(url)
        except Exception as err:  # SQLAlchemy, drivers and the file system raise many kinds
            attempts += 1
            text = str(err).strip()
            # a lock SQLite waited on in vain is held by another process: no race of new workers
            held = _is_locked(text) and time.monotonic() - attempt_started >= SQLITE_WAIT_S
            if attempts < STORAGE_INIT_ATTEMPTS and _is_schema_race(text) and not held:
                time.sleep(0.2 + random.random())  # another worker is creating the tables
                continue
            first = _first_line(err)
            if _is_locked(text):  # not the URL's fault: the advice on URL formats would mislead
                raise DataError(f"Optuna storage {shown_uri(url)!r} {LOCKED} ({first[:200]}, waited "
                                f"{time.monotonic() - started:.0f} s); run again once that process is "
                                f"done, or use another --storage") from None
            raise ConfigError(f"cannot open Optuna storage {shown_uri(url)!r}: {first[:200]}; "
                              f"use sqlite:///abs/path.db, postgresql://user@host/db, mysql://… "
                              f"or journal:///abs/path/study.log") from None


def _check_storage_folder(url: str) -> None:
    """A storage file's folder must exist: a typo in the path should not create folders
    (journal files) or end in SQLite's bare `unable to open database file`."""
    path = storage_file(url)
    if path is None or path.parent.is_dir():
        return
    missing = next((p for p in reversed(path.parents) if not p.is_dir()), path.parent)
    why = (f"{missing} is a file, not a folder; fix the path" if missing.exists() else
           f"folder {missing} does not exist; fix the path, or create the folder first")
    raise ConfigError(f"cannot open Optuna storage {shown_uri(url)!r}: {why}")


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(storage_file(url))))
    sqlite = storage_file(url) is not None
    return BeatThroughLocks(url, engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_S}} if sqlite else None,
                            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                            heartbeat_stale_trial_callback=RetryAndEndRuns(max_retry=MAX_RETRY))


class BeatThroughLocks(optuna.storages.RDBStorage):
    """An RDB storage whose heartbeat outlasts a database locked for a while. Optuna's heartbeat
    thread died on the first beat the lock refused (a traceback on stderr, the trial training on
    without beats), so a trial longer than the grace period was then failed and re-run by other
    workers while it still ran. A refused beat is skipped; the next one, HEARTBEAT_S later, retries."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError as err:
            if _database_error(err) is None:
                raise


class RetryAndEndRuns(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """A trial of a killed worker, found by its stale heartbeat: re-queued with the same params,
    and its MLflow run and the dead worker's tune run (left RUNNING by the kill) marked KILLED."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeued = copy.deepcopy(trial)  # the retry is not the dead worker's: it gets its own owner
        requeued.user_attrs.pop(OWNER_ATTR, None)
        super().__call__(study, requeued)
        run_ids = [trial.user_attrs[k] for k in RUN_ATTRS if k in trial.user_attrs]
        if not run_ids:
            return
        import mlflow

        tracking.quiet_mlflow()
        try:
            tracking.end_runs(run_ids, mlflow.MlflowClient(tracking_uri=tracking.tracking_uri()))
        except Exception:  # bookkeeping of a dead run: never a reason to stop the study
            pass


def _first_line(err: BaseException) -> str:
    """An error's first line, without SQLAlchemy's `(sqlite3.OperationalError) ` prefix (and
    without credentials: a driver's error may quote the URL it was given)."""
    text = str(err).strip()
    return shown_uri(re.sub(r"^\([\w.]+\) ", "", text.splitlines()[0])) if text else type(err).__name__


def _is_locked(message: str) -> bool:
    """A database another process holds a lock on for longer than the driver waits."""
    return any(s in message for s in LOCKED_MESSAGES)


def _is_schema_race(message: str) -> bool:
    """Workers starting together on a new database race to create Optuna's tables."""
    return any(s in message for s in ("already exists", "UNIQUE constraint failed", "database is locked",
                                      "Duplicate entry", "duplicate key"))


def search_space(p: Params) -> dict[str, FloatDistribution]:
    return {"train.lr": FloatDistribution(p.tune.lr_low, p.tune.lr_high, log=True),
            "model.dropout": FloatDistribution(p.tune.dropout_low, p.tune.dropout_high)}


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """`median` | `hyperband` | `none`, sized for trials of `epochs` epochs."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                       n_warmup_steps=PRUNE_WARMUP_EPOCHS)


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random draws are seeded by (seed, trial number).

    A plain seeded sampler restarts its random stream in every process, so a resumed
    study or a second worker re-proposes the first worker's start-up points. Seeding per
    trial keeps one worker's study reproducible and gives every trial its own draws.
    """

    def __init__(self, seed: int, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed
        self.began: dict[int, int] = {}  # id: number of each trial this process began (fail_interrupted_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        self.began[trial._trial_id] = trial.number
        study._storage.set_trial_user_attr(trial._trial_id, OWNER_ATTR, fileio.this_process())
        # Optuna's heartbeat thread starts only once the trial is set up; a worker stopped
        # before its first beat left a trial that no heartbeat could ever find stale (a stale
        # trial is one whose last beat is old), RUNNING forever. Beat at once.
        if is_heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(trial._trial_id)
        # A 4-word key (MT19937's init_by_array): seeding with one int gives first draws that
        # cluster (0.449, 0.451, 0.463 for trials 0-2 of seed 42), so the first trials'
        # learning rates came out almost equal.
        trial_seed = np.random.SeedSequence([self._base_seed, trial.number]).generate_state(4)
        # TPESampler keeps no public way to reseed with a given seed; these are its two
        # generators in Optuna 4-5 (test_seeded_sampler_gives_every_trial_its_own_draws)
        self._rng.rng.seed(trial_seed)
        self._random_sampler._rng.rng.seed(trial_seed)


def _space_record(space: dict[str, FloatDistribution]) -> dict[str, dict[str, Any]]:
    return {k: {"low": d.low, "high": d.high, "log": d.log} for k, d in space.items()}


def _recorded_space(study: optuna.Study) -> dict[str, dict[str, Any]] | None:
    """The space the study was made with; for a study made without our attrs, its trials'."""
    recorded = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if recorded is not None:
        return recorded
    for trial in study.get_trials(deepcopy=False):
        if trial.distributions:
            return {k: {"low": d.low, "high": d.high, "log": getattr(d, "log", False)}
                    for k, d in trial.distributions.items()}
    return None


def load_study(params: Params, storage: optuna.storages.BaseStorage,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create or resume study `tune.study_name`; refuse one recorded with another search
    space, another number of epochs per trial or another direction."""
    t = params.tune
    name = t.study_name
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        pruner=pruner or make_pruner(t.pruner, t.epochs),
        sampler=TrialSeededTPESampler(seed=params.base.seed, n_startup_trials=TPE_STARTUP_TRIALS))
    hint = "use --study-name NEW for a new study, or restore the tune section it was run with"
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise ConfigError(f"study '{name}' exists and does not maximise one value "
                          f"(it is not a val-accuracy study); {hint}")
    space = _space_record(search_space(params))
    recorded = _recorded_space(study)
    if recorded is not None and recorded != space:
        diff = "; ".join(f"{k}: study {recorded.get(k)}, now {space.get(k)}"
                         for k in sorted(set(space) | set(recorded)) if recorded.get(k) != space.get(k))
        raise ConfigError(f"study '{name}' exists with another search space ({diff}); {hint}")
    recorded_epochs = study.user_attrs.get(EPOCHS_ATTR)
    if recorded_epochs is not None and recorded_epochs != t.epochs:
        raise ConfigError(f"study '{name}' exists with {recorded_epochs} epochs per trial, now "
                          f"{t.epochs} (their accuracies do not compare); add to it with "
                          f"--epochs {recorded_epochs}, or use --study-name NEW")
    if SEARCH_SPACE_ATTR not in study.user_attrs:
        study.set_user_attr(SEARCH_SPACE_ATTR, space)
    if recorded_epochs is None:
        study.set_user_attr(EPOCHS_ATTR, t.epochs)
    # trials of killed workers: FAIL, re-queued; at once for this machine's, by the heartbeat
    # for others' (a no-op for storages without one)
    for number, owner in fail_orphaned_trials(study):
        print(f"trial {number} failed: its worker ({owner}) is gone")
    optuna.storages.fail_stale_trials(study)
    return study


def fail_orphaned_trials(study: optuna.Study) -> list[tuple[int, str]]:
    """Fail and re-queue the RUNNING trials whose worker process is known to be gone (it ran on
    this machine and was killed), and end their MLflow runs, without waiting for the heartbeat's
    grace period; returns (number, owner) of each. Other machines' trials are left to the heartbeat."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if not fileio.owner_gone(owner):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        RetryAndEndRuns(max_retry=MAX_RETRY)(study, study._storage.get_trial(trial._trial_id))
        failed.append((trial.number, owner))
    return failed


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the trials this process began that are still RUNNING (numbers returned):
    Optuna fails a trial whose objective sees Ctrl-C, but not one interrupted while it is
    being created, sampled or told."""
    failed = []
    for trial_id in getattr(study.sampler, "began", {}):
        trial = study._storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        try:
            study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile
        failed.append(trial.number)
    return failed


def _database_error(err: BaseException) -> BaseException | None:
    """The first database OperationalError (locked, unreachable) behind `err`, if any: the
    deepest SQLAlchemy one in the chain of errors raised while handling others (later ones are
    clean-up failing on it again), whose frames show whose database it is (the plain sqlite3
    error below it holds SQLAlchemy's frames only)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    found: list[BaseException] = []
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, (OperationalError, sqlite3.OperationalError)):
            found.append(link)
        link = link.__context__ or link.__cause__
    return next((e for e in reversed(found) if isinstance(e, OperationalError)), found[-1] if found else None)


def store_failure(err: BaseException, url: str) -> str | None:
    """Which store failed and how, when `err` comes from a database that is locked or gone (a
    database OperationalError anywhere in its chain: Optuna and MLflow wrap it, and their
    clean-up may fail on it again, as Optuna's does with an UnboundLocalError); else None."""
    cause = _database_error(err)
    if cause is None:
        return None
    modules = (frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(cause.__traceback__))
    if any(m == "mlflow" or m.startswith("mlflow.") for m in modules):
        store = f"MLflow store {shown_uri(tracking.tracking_uri())!r}"
    else:
        store = f"Optuna storage {shown_uri(url)!r}"
    return f"{store} {LOCKED if _is_locked(str(cause)) else 'failed'} ({_first_line(cause)[:200]})"


def stopped_by_store(err: BaseException, url: str, study: optuna.Study | None) -> str | None:
    """The one line for an invocation stopped by a store that is locked or gone (None for other
    errors), after failing the trials it left RUNNING: finished trials stay in the study, and
    the same command continues it."""
    problem = store_failure(err, url)
    if problem is None:
        return None
    ended = ""
    if study is not None:
        try:
            fail_interrupted_trials(study)
            failed = [number for trial_id, number in getattr(study.sampler, "began", {}).items()
                      if study._storage.get_trial(trial_id).state == TrialState.FAIL]
            ended = f"trial {', '.join(map(str, failed))} failed; " if failed else ""
        except Exception as again:  # the storage still cannot be written
            if store_failure(again, url) is None:
                raise
            ended = ("the trial it was running stays RUNNING until the next run on this machine fails "
                     "and retries it; ")
    when = "once that process is done" if LOCKED in problem else "once the store answers again"
    return f"stopped: {problem}; {ended}finished trials are kept: run the same command again {when}"


def running_trials_hint(url: str, study_name: str, rows: list[dict[str, Any]]) -> str | None:
    """For a journal study with RUNNING trials: how to fail one whose worker died on another
    machine. A journal file has no heartbeat (Optuna 5.0), and only a worker on the dead one's
    machine can see it is gone, so nothing here clears such a trial by itself."""
    running = [str(r["number"]) for r in rows if r["state"] == TrialState.RUNNING.name]
    if not running or not is_journal(url):
        return None
    import shlex

    return (f"running: trial {', '.join(running)}; one whose worker died on another machine stays RUNNING "
            f"(a journal file has no heartbeat): optuna tell --storage {shlex.quote(str(storage_file(url)))} "
            f"--study-name {shlex.quote(study_name)} --trial-number N --state fail")


def existing_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """A study to report on or apply, without adding trials (so any ranges and epochs)."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(f"no study '{name}' in this storage (it has: {', '.join(names) or 'none'}); "
                          f"pass --study-name, or run trials first") from None


# ---------------------------------------------------------------- objective and MLflow


@dataclass
class TrialLogger:
    """Each trial as a nested MLflow run under the tune run. Only `MlflowClient` calls
    with explicit run ids: MLflow's active-run stack is per thread, trials (n_jobs > 1)
    run in worker threads."""

    experiment_id: str
    parent_run_id: str

    def start(self, trial: optuna.Trial, values: dict[str, float]) -> str:
        import mlflow
        from mlflow.entities import Param

        client = mlflow.MlflowClient()
        # the owner: a run this process could not end (its store locked) is ended by the next stage
        import torch

        tags = {"mlflow.parentRunId": self.parent_run_id, "trial_number": str(trial.number),
                "study": trial.study.study_name, tracking.OWNER_TAG: fileio.this_process(),
                "torch_threads": str(torch.get_num_threads())}  # in the trial's own thread
        retry_of = retried_trial_number(trial)
        if retry_of is not None:
            tags["retry_of_trial"] = str(retry_of)
        run = client.create_run(self.experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        for key, run_id in zip(RUN_ATTRS, (run.info.run_id, self.parent_run_id)):
            trial.set_user_attr(key, run_id)
        return run.info.run_id

    @staticmethod
    def epoch(run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # one write per epoch, not one per metric
        mlflow.MlflowClient().log_batch(
            run_id, metrics=[Metric(k, float(metrics[k]), now, epoch) for k in LOGGED_METRICS])

    @staticmethod
    def end(run_id: str, state: str, value: float | None) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        if value is not None:
            client.log_metric(run_id, "best_val_acc", value)
        client.set_tag(run_id, "trial_state", state)
        client.set_terminated(run_id, "FAILED" if state == "FAIL" else "FINISHED")


def retried_trial_number(trial: optuna.Trial) -> int | None:
    """The trial a re-queued trial retries (Optuna 5's `Trial` no longer shows system attrs)."""
    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return frozen.system_attrs.get("failed_trial")
    return None


def threads_per_trial(n_jobs: int, requested: int = 0) -> int:
    """torch CPU threads for each of `n_jobs` trials trained at once (threads of one process):
    the CPUs `train.threads` gives one training (`requested`; 0: every usable CPU) shared out.
    torch's thread count is per process, so each trial would otherwise start that many and
    n_jobs trials ask for n_jobs times the CPUs."""
    return max(1, cpu_threads(requested) // n_jobs)


def make_objective(params: Params, train: SplitTensors, val: SplitTensors, classes: list[str],
                   logger: TrialLogger | None = None) -> Callable[[optuna.Trial], float]:
    """Val accuracy of `tune.epochs` epochs of training with the trial's lr and dropout,
    reported every epoch so the pruner can stop a laggard."""
    space = search_space(params)
    epochs = params.tune.epochs

    def objective(trial: optuna.Trial) -> float:
        values = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()}
        # patience off: a trial's budget is fixed, the pruner decides who stops early
        trial_params = params.with_epochs(epochs, **values, **{"train.patience": 0})
        run_id = None

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            if run_id:
                logger.epoch(run_id, epoch, metrics)
            trial.report(metrics["val_acc"], epoch)
            # pruning after the last epoch would save nothing and throw the result away
            return epoch < epochs and trial.should_prune()

        state, value = "FAIL", None
        try:  # the trial's run is started inside: a Ctrl-C at any point ends it
            run_id = logger.start(trial, values) if logger else None
            result = fit(trial_params, train, val, classes, on_epoch=on_epoch)
            if result["stopped"] == "pruned":
                state = "PRUNED"
                raise optuna.TrialPruned(f"pruned after epoch {result['epochs_run']}")
            state, value = "COMPLETE", result["best_val_acc"]
            return value
        finally:
            if run_id:
                logger.end(run_id, state, value)

    return objective


# ---------------------------------------------------------------- results


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: state, value, the two params, epochs run, duration, retry origin."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "val_acc": t.value,
            "train.lr": t.params.get("train.lr"), "model.dropout": t.params.get("model.dropout"),
            "epochs": len(t.intermediate_values),
            "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
            "retry_of": t.system_attrs.get("failed_trial"),
        })
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == TrialState.COMPLETE.name]
    return max(done, key=lambda r: r["val_acc"]) if done else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["number"])
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buffer.getvalue())  # workers sharing a study may write it at once
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
    ax.step([r["number"] for r in done], best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel="val accuracy", title="Optimisation history")
    ax.legend()
    paths = [out_dir / "optimization_history.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    for key, log in (("train.lr", True), ("model.dropout", False)):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.scatter([r[key] for r in done], [r["val_acc"] for r in done], label="complete")
        if pruned:  # a pruned trial has no final value: shown at the floor of the plot
            floor = min((r["val_acc"] for r in done), default=0.0)
            ax.scatter([r[key] for r in pruned], [floor] * len(pruned), marker="x", color="gray",
                       label="pruned")
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


def write_best(study: optuna.Study, path: Path) -> dict[str, Any]:
    """best_params.json: the two tuned values, their val accuracy, the study and its size."""
    best = study.best_trial
    data = {**{k: best.params[k] for k in TUNED_KEYS}, "val_acc": best.value, "trial": best.number,
            "study": study.study_name, "n_trials": len(study.trials)}
    fileio.write_json(path, data)
    return data


# ---------------------------------------------------------------- params.yaml editing

_KEY_LINE = r"^(?P<indent>[ \t]+){key}:(?P<space>[ \t]*)(?P<value>[^#\n]*?)(?P<tail>[ \t]*(#.*)?)$"


def yaml_float(value: float) -> str:
    """Six significant digits that YAML 1.1 (PyYAML) reads back as a float: it reads
    `5e-05` as a string, so an exponent always gets a mantissa with a dot."""
    text = f"{value:.6g}"
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def apply_to_params_file(path: Path, values: dict[str, float]) -> None:
    """Set `section.key` values in a params file, leaving every other byte as it was
    (comments, order, alignment); written atomically."""
    text = Path(path).read_text()
    for dotted, value in values.items():
        section, key = dotted.split(".")
        new_value = yaml_float(value)
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
        tail = line["tail"].lstrip()
        pad = max(1, len(line["value"]) + len(line["tail"]) - len(tail) - len(new_value))
        new_line = f"{line['indent']}{key}:{line['space']}{new_value}" + (" " * pad + tail if tail else "")
        block = block[:line.start()] + new_line + block[line.end():]
        text = text[:sec.end()] + block + text[block_end:]
    fileio.write_text(path, text)

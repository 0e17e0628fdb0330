"""Champion / challenger promotion in the MLflow registry.

The champion is the version with alias `champion` (and registry stage `Production`; both
are kept in step). A challenger replaces it when there is none, or when it beats it by at
least `min_delta` accuracy on the *same* validation split (FER2013 PublicTest), both scored
side by side in the current run. Choosing a model is selection, so it never looks at the
test split (PrivateTest), which is only reported. A model trained on the demo dataset never
replaces a FER2013 champion, and a FER2013 model always replaces a demo-data champion
(their scores are never compared).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from emovision import fileio, tracking

REAL_DATASET = "fer2013"
# A registered model's tag naming the version a promotion is making champion, while it does:
# what lets the next gate tell a promotion stopped half-way from a champion archived by hand.
IN_FLIGHT = "promotion_in_flight"


def gate_metric(tta: bool) -> str:
    """The tag a version's gate score lives under, named after what it measures."""
    return "val_acc_tta" if tta else "val_acc"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_acc: float
    champion_version: str | None = None
    champion_acc: float | None = None


def current_champion(name: str):
    """The champion ModelVersion (alias first, then stage Production), or None."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, tracking.CHAMPION)
    except mlflow.exceptions.MlflowException:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            latest = client.get_latest_versions(name, stages=[tracking.PRODUCTION])
        except mlflow.exceptions.MlflowException:
            return None
    return latest[0] if latest else None


def decide(challenger_dataset: str, challenger_acc: float, champion, min_delta: float,
           score_champion: Callable[[str], float]) -> Decision:
    """The gate. `score_champion(version)` evaluates the champion on the challenger's validation split."""
    if champion is None:
        return Decision(True, "no champion yet", challenger_acc)
    champion_dataset = champion.tags.get("dataset", "unknown")
    if challenger_dataset != REAL_DATASET and champion_dataset == REAL_DATASET:
        return Decision(False, f"a {challenger_dataset} model never replaces a FER2013 champion",
                        challenger_acc, champion.version)
    if challenger_dataset == REAL_DATASET and champion_dataset != REAL_DATASET:
        return Decision(True, f"a FER2013 model replaces a {champion_dataset} champion",
                        challenger_acc, champion.version)
    champion_acc = score_champion(champion.version)
    gain = challenger_acc - champion_acc
    if gain >= min_delta:
        reason = f"beats champion v{champion.version} by {gain:+.4f} (>= {min_delta})"
    else:
        reason = f"does not beat champion v{champion.version} by {min_delta} ({gain:+.4f})"
    return Decision(gain >= min_delta, reason, challenger_acc, champion.version, champion_acc)


def _version(model_version) -> str | None:
    return None if model_version is None else str(model_version.version)


def gate(name: str, version: str, dataset: str, acc: float, min_delta: float,
         score_champion: Callable[[str], float], metric: str) -> Decision | None:
    """Decide on `version` (its gate score `acc` on `dataset`'s validation split) against the
    champion, record the decision and promote it when it wins; None when it is the champion
    already. Scoring the champion takes a while, and meanwhile another gate (a parallel `dvc
    queue` worker, `stages.promote`) may have made a new champion: the decision is applied only
    if the champion it was made against still holds, else it is made again against the new one,
    so a challenger never replaces a champion it was not compared with."""
    with tracking.store_lock():
        finished = finish_promotion(name)
    if finished:
        print(finished)
    while True:
        champion = current_champion(name)
        if _version(champion) == str(version):
            return None
        decision = decide(dataset, acc, champion, min_delta, score_champion)
        with tracking.store_lock():  # check and promote as one step among this machine's gates
            if _version(current_champion(name)) != _version(champion):
                continue
            record(name, version, decision, metric)
            if decision.promote:
                promote(name, version)
        return decision


def promote(name: str, version: str) -> None:
    """Make `version` the `champion` alias, then Production (archiving the previous one): two
    writes, with Ctrl-C (and kill) held between them; a Ctrl-C there left Production on the new
    version and @champion on the old, archived one. What a kill -9 or a store error leaves between
    them (the alias moved, the stage not) the next gate completes (`finish_promotion`): the
    registered model's IN_FLIGHT tag names the version while they are made."""
    import mlflow

    client = mlflow.MlflowClient()
    with fileio.ctrl_c_held():
        client.set_registered_model_tag(name, IN_FLIGHT, str(version))
        client.set_registered_model_alias(name, tracking.CHAMPION, version)
        _make_production(client, name, version)
        client.delete_registered_model_tag(name, IN_FLIGHT)


def _make_production(client, name: str, version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(name, version, tracking.PRODUCTION,
                                              archive_existing_versions=True)


def finish_promotion(name: str) -> str | None:
    """Complete a promotion stopped between its two writes: the IN_FLIGHT tag and @champion name a
    version that is not Production (which still serves the previous champion). Returns a line
    saying so, or None. A champion that is not Production otherwise is the user's doing (archived,
    or Production moved to another version: a rollback) and is left as it is."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        pending = client.get_registered_model(name).tags.get(IN_FLIGHT)
    except mlflow.exceptions.MlflowException:
        return None
    if pending is None:
        return None
    try:
        champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    line = None
    # the alias not moved yet: the promotion never happened; the stage made: nothing left to do
    if champion is not None and str(champion.version) == pending and champion.current_stage != tracking.PRODUCTION:
        _make_production(client, name, pending)
        line = (f"{name} v{pending} was made @{tracking.CHAMPION} by a promotion that stopped before "
                f"making it {tracking.PRODUCTION}: it is {tracking.PRODUCTION} now")
    client.delete_registered_model_tag(name, IN_FLIGHT)
    return line


def recorded_score(version, metric: str) -> float | None:
    """A version's recorded gate score (`val_acc_tta` / `val_acc`), also from tags written
    before they were named after what they measure (`challenger_val_acc`)."""
    tags = version.tags
    value = tags.get(metric) or tags.get("challenger_val_acc")
    return float(value) if value else None


def record(name: str, version: str, decision: Decision, metric: str) -> None:
    """Store the decision and both scores as tags of the challenger version: `metric` (the
    challenger's score, e.g. val_acc_tta) and `champion_<metric>`."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = {"promotion": "promoted" if decision.promote else "rejected",
            "promotion_reason": decision.reason, "gate_metric": metric,
            metric: f"{decision.challenger_acc:.4f}"}
    if decision.champion_version is not None:
        tags["champion_version"] = str(decision.champion_version)
    if decision.champion_acc is not None:
        tags[f"champion_{metric}"] = f"{decision.champion_acc:.4f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)

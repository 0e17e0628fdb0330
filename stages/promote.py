"""Force a promotion, or register the FER2013 model shipped with the package.

    python -m stages.promote --version 3     # v3 becomes Production + @champion (old one archived)
    python -m stages.promote --pretrained    # register emovision/weights as a version of `fer`;
                                             # Production unless a better FER2013 champion exists
"""
from __future__ import annotations

from emovision import artifact, promotion, serving, tracking
from emovision.artifact import WEIGHTS_DIR
from emovision.config import Params
from emovision.errors import ModelRefError, cli_main
from stages import open_store, parse, stage_parser


def force(name: str, version: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise ModelRefError(f"no version {version} of model '{name}'. {tracking._registry_hint(name)}") from None
    with tracking.store_lock():  # not between another promotion's check and its change
        promotion.promote(name, version)
    client.set_model_version_tag(name, version, "promotion", "forced")
    print(f"{name} v{version} is now Production (@{tracking.CHAMPION})")


def shipped_scores(spec: artifact.ModelSpec) -> dict[str, float]:
    """A model folder's recorded FER2013 accuracies, named as the gate names them (a teacher
    records PublicTest only)."""
    m = spec.metrics
    tta = m.get("tta") == "hflip"  # the headline figures of the shipped config use flip TTA
    plain = m.get("no_tta", m) if tta else m
    scores = {}
    for split, name in (("val", "val_acc"), ("test", "test_acc")):
        if split in plain:
            scores[name] = plain[split]["accuracy"]
        if tta and split in m:
            scores[f"{name}_tta"] = m[split]["accuracy"]
    return scores


def log_lineage(spec: artifact.ModelSpec) -> None:
    """How the shipped model was made, in the active run: its training params (the recipe its
    config.json carries) and, for a distilled model, one nested run per teacher with the
    teacher's own recipe and PublicTest figures, so `mlflow ui` shows the whole recipe."""
    import mlflow

    if not spec.recipe:
        return
    mlflow.log_params(spec.recipe)
    if not spec.recipe.get("distill.alpha"):
        return
    for ref in spec.recipe.get("distill.teachers") or ():
        try:
            teacher = artifact.read_spec(ref)
        except ModelRefError as err:
            print(f"teacher {ref} not logged: {err}")
            continue
        val = shipped_scores(teacher)
        with tracking.tracked_run(run_name=f"teacher {ref}", nested=True,
                                  tags={"dataset": "fer2013", "stage": "teacher", "teacher": ref}):
            mlflow.log_params(teacher.recipe)
            mlflow.log_metrics(val)


def register_pretrained(params: Params) -> str:
    """Register the shipped weights once (found again by their hash) as an MLflow model, and gate them."""
    import mlflow

    name = params.registry.model_name
    metric = promotion.gate_metric(params.evaluate.tta)
    spec, state_dict = artifact.load_model_dir(WEIGHTS_DIR)
    digest = artifact.weights_digest(WEIGHTS_DIR)
    scores = shipped_scores(spec)
    client = mlflow.MlflowClient()
    existing = [v for v in client.search_model_versions(f"name='{name}'")
                if v.tags.get("pretrained_sha256") == digest] if client.search_registered_models(
                    filter_string=f"name='{name}'") else []
    if existing:
        version = existing[0].version
        print(f"shipped weights already registered as {name} v{version}")
    else:
        with tracking.tracked_run(run_name=f"register-pretrained {spec.arch}-w{spec.arch_kwargs.get('width')} fer2013",
                                  tags={"dataset": "fer2013", "stage": "promote"}) as run:
            model_info = serving.log_model(spec, state_dict)
            log_lineage(spec)
            mlflow.log_metrics(scores)  # the run's and (MLflow 3 links them) its logged model's
            version = tracking.register_model(
                name, model_info, tags={"dataset": "fer2013", "pretrained_sha256": digest, "arch": spec.arch,
                                        **{k: f"{v:.4f}" for k, v in scores.items()}})
        print(f"registered the shipped FER2013 model as {name} v{version} (run {run.info.run_id})")

    def recorded_acc(v: str) -> float:
        # Both numbers are FER2013 PublicTest accuracies recorded when each was evaluated
        # (selection never looks at PrivateTest).
        score = promotion.recorded_score(client.get_model_version(name, v), metric)
        return float("inf") if score is None else score

    decision = promotion.gate(name, version, "fer2013", scores[metric], params.registry.min_delta,
                              recorded_acc, metric)
    if decision is None:
        print(f"{name} v{version} is already Production (@{tracking.CHAMPION})")
        return version
    print(f"{name} v{version}: {'Production (@champion)' if decision.promote else 'not promoted'} — {decision.reason}")
    return version


def version_number(text: str) -> str:
    """`3`, ` 3` or `v3` (as the stages print versions: `fer v3`) -> `3`."""
    text = text.strip()
    return text[1:] if text[:1] in ("v", "V") and text[1:].isdigit() else text


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", type=version_number,
                       help="registered version to make Production / @champion (3 or v3)")
    group.add_argument("--pretrained", action="store_true", help="register the shipped FER2013 model")
    args, params = parse(parser, argv)
    if not args.pretrained:
        tracking.read_client()  # a version needs a store: one line where there is none, never an empty one made
    open_store()
    if args.pretrained:
        register_pretrained(params)
    else:
        force(params.registry.model_name, args.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

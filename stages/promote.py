"""Force a promotion, or register the FER2013 model shipped with the package.

    python -m stages.promote --version 3     # v3 becomes Production + @champion (old one archived)
    python -m stages.promote --pretrained    # register emovision/weights as a version of `fer`;
                                             # Production unless a better FER2013 champion exists
"""
from __future__ import annotations

import hashlib
import json

from emovision import promotion, tracking
from emovision.config import Params
from emovision.errors import ModelRefError, cli_main
from emovision.inference import WEIGHTS_DIR
from stages import parse, stage_parser


def force(name: str, version: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise ModelRefError(f"no version {version} of model '{name}'. {tracking._registry_hint(name)}") from None
    promotion.promote(name, version)
    client.set_model_version_tag(name, version, "promotion", "forced")
    print(f"{name} v{version} is now Production (@{tracking.CHAMPION})")


def register_pretrained(params: Params) -> str:
    """Register the shipped weights once (found again by their hash) and gate them."""
    import mlflow

    name = params.registry.model_name
    if not (WEIGHTS_DIR / tracking.CONFIG_FILE).is_file():
        raise ModelRefError(f"no pretrained weights shipped in {WEIGHTS_DIR}")
    digest = hashlib.sha256((WEIGHTS_DIR / tracking.WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    config = json.loads((WEIGHTS_DIR / tracking.CONFIG_FILE).read_text())
    test_acc, val_acc = config["metrics"]["test"]["accuracy"], config["metrics"]["val"]["accuracy"]
    client = mlflow.MlflowClient()
    existing = [v for v in client.search_model_versions(f"name='{name}'")
                if v.tags.get("pretrained_sha256") == digest] if client.search_registered_models(
                    filter_string=f"name='{name}'") else []
    if existing:
        version = existing[0].version
        print(f"shipped weights already registered as {name} v{version}")
    else:
        with tracking.tracked_run(run_name="register-pretrained", tags={"dataset": "fer2013",
                                                                        "stage": "promote"}) as run:
            mlflow.log_artifacts(str(WEIGHTS_DIR), tracking.MODEL_ARTIFACT)
            mlflow.log_metrics({"test_accuracy": test_acc, "val_accuracy": val_acc})
            version = tracking.register_model(
                name, mlflow.get_artifact_uri(tracking.MODEL_ARTIFACT), run.info.run_id,
                tags={"dataset": "fer2013", "pretrained_sha256": digest, "arch": config["arch"],
                      "test_acc": f"{test_acc:.4f}", "val_acc": f"{val_acc:.4f}"})
        print(f"registered the shipped FER2013 model as {name} v{version}")
    champion = promotion.current_champion(name)
    if champion is not None and str(champion.version) == str(version):
        print(f"{name} v{version} is already Production (@{tracking.CHAMPION})")
        return version

    def recorded_acc(v: str) -> float:
        # Both numbers are FER2013 PublicTest accuracies recorded when each was evaluated
        # (selection never looks at PrivateTest).
        tags = client.get_model_version(name, v).tags
        return float(tags.get("challenger_val_acc") or tags.get("val_acc") or "inf")

    decision = promotion.decide("fer2013", val_acc, champion, params.registry.min_delta, recorded_acc)
    promotion.record(name, version, decision)
    if decision.promote:
        promotion.promote(name, version)
    print(f"{name} v{version}: {'Production (@champion)' if decision.promote else 'not promoted'} — {decision.reason}")
    return version


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", help="registered version to make Production / @champion")
    group.add_argument("--pretrained", action="store_true", help="register the shipped FER2013 model")
    args, params = parse(parser, argv)
    tracking.setup()
    if args.pretrained:
        register_pretrained(params)
    else:
        force(params.registry.model_name, args.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage 2b (run by train's dvc.yaml entry): export the trained model to ONNX and check it.

Writes <paths.models>/fer.onnx (dynamic batch axis, the model's spec in its metadata) from
best.pt, checks it against PyTorch on val (PublicTest): max probability difference at most
onnx_backend.PARITY_MAX_DIFF and identical predictions, with and without flip TTA, or it fails and
writes nothing. Logs the file with the registered MLflow model (and the parity figures to
the training run), so `--backend onnx --model models:/fer/Production` uses it.
"""
from __future__ import annotations

import json
from pathlib import Path

from emovision import artifact, fileio, scoring, tracking
from emovision.config import Params
from emovision.data.prepared import load_meta, load_split
from emovision.errors import DataError, cli_main
from emovision.inference import from_spec
from emovision.onnx_backend import ONNX_FILE, disagreement, export_onnx, parity
from stages import open_store, parse, stage_parser


def export(params: Params, models_dir: Path | None = None) -> dict:
    models_dir = Path(params.paths.models) if models_dir is None else models_dir
    best = models_dir / "best.pt"
    if not best.is_file():
        raise DataError(f"no trained model in {models_dir}/ (run `python -m stages.train` first)")
    info = tracking.read_run_file(models_dir) or {}  # checked before anything is written
    if info.get("model_id"):
        open_store()  # the store answers: checked before anything is written
        tracking.check_recorded_run(models_dir, info, logged_model=True)  # fer.onnx is logged with it
    spec, state_dict = artifact.load_checkpoint(best)
    prepared = Path(params.data.prepared_dir)
    load_meta(prepared)
    x, _ = load_split(prepared, "val")
    target = models_dir / ONNX_FILE
    # checked under a temporary name: fer.onnx is replaced only by an export that agrees with PyTorch
    with fileio.atomic_path(target, suffix=".onnx") as staged:
        export_onnx(spec, state_dict, staged)
        check = parity(from_spec(spec, state_dict, "cpu", "export"), staged, x, scoring.CPU_BATCH)
        if disagreement(check):
            raise DataError(f"ONNX export of {best} disagrees with PyTorch on val: {json.dumps(check)}")
    print(f"wrote {target}: val (PublicTest, {check['faces']} faces) max prob diff "
          f"{check['max_prob_diff_plain']:.2e} (TTA {check['max_prob_diff_tta']:.2e}), "
          f"prediction mismatches {check['prediction_mismatches_plain']} / {check['prediction_mismatches_tta']}")
    if info.get("model_id"):
        import mlflow

        mlflow.MlflowClient().log_model_artifact(info["model_id"], str(target))
        with tracking.tracked_run(run_id=info["run_id"]):
            mlflow.log_metrics({f"onnx_{k}": v for k, v in check.items() if k != "faces"})
        print(f"logged {ONNX_FILE} with {info.get('model_name')} v{info.get('model_version')} "
              f"(model {info['model_id']})")
    return check


@cli_main
def main(argv: list[str] | None = None) -> int:
    _, params = parse(stage_parser(__doc__.splitlines()[0]), argv)
    export(params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

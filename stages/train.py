"""Stage 2: train a model on data/prepared/, track it in MLflow and register it.

Writes <paths.models>/best.pt, last.pt (both self-describing, weights_only-loadable),
run.json (MLflow run id and registered version, read by later stages), and
<paths.reports>/train_history.csv (DVC plots) and training_curves.png.
`--resume` continues an interrupted run from last.pt, in the same MLflow run;
`--auto-resume` (what `dvc repro` runs) does so only when last.pt is an unfinished run of
the same params on the same data (training.input_digests), and starts over otherwise.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from emovision import artifact, fileio, plots, serving, tracking
from emovision.config import Params
from emovision.errors import ConfigError, DataError, EmovisionError, cli_main
from emovision.models import create_model
from emovision.training import describe_train_set, fit, input_digests, load_train_val, model_spec, resolve_amp
from stages import open_store, parse, stage_parser
from stages.export import export as export_onnx_step

HISTORY_CSV = "train_history.csv"  # inside paths.reports
CURVES_PNG = "training_curves.png"
# The sections and keys whose change makes a checkpoint belong to another training: a run
# is resumed only when all of them are unchanged (registry, bench, tune... do not matter).
TRAINING_KEYS = ("base.", "preprocess.", "model.", "train.", "augment.", "evaluate.batch_size",
                 "data.prepared_dir", "data.app_views", "distill.", "inputs.")
# How many CPU threads run the training changes its speed, not what it learns: a run
# interrupted on a busy machine may continue with another thread count.
RESUME_FREE_KEYS = ("train.threads",)
# In run.json from registration until the ONNX export that follows it (--export-onnx) is done:
# a `dvc repro` interrupted in between then exports the registered model instead of training anew.
ONNX_PENDING = "onnx_export_pending"


def write_history(history: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    fileio.write_text(path, buffer.getvalue())


def _training_params(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if k.startswith(TRAINING_KEYS) and k not in RESUME_FREE_KEYS}


def _changed(params: Params, saved: dict, inputs: dict[str, str] | None) -> list[str]:
    """The training params and inputs that differ from those a checkpoint was trained with."""
    current = {**params.flat(), **(inputs or {})}
    return sorted(k for k, v in _training_params(current).items() if saved.get(k) != v)


def interrupted_run(params: Params, models_dir: Path, inputs: dict[str, str] | None = None,
                    in_store: bool = True) -> tuple[str | None, str]:
    """(MLflow run id, why) of an unfinished training of these params (and, when given, these
    `inputs`: training.input_digests, the data it learns from) in `models_dir`, or (None, why
    not): the one decision `--resume` and `--auto-resume` take. Unfinished: run.json names a
    run but no registered version yet, and that run is in the store in use (not one deleted to
    start afresh, nor deleted in `mlflow ui`): call after `open_store`, or with `in_store`
    False, which leaves that last check out (what can be decided without a store).
    A corrupt run.json is a DataError: whether it can be resumed is unknown."""
    info, last = tracking.read_run_file(models_dir), models_dir / "last.pt"
    if not last.is_file() or info is None:
        return None, f"no interrupted run in {models_dir}/ (needs last.pt and {tracking.RUN_FILE})"
    try:
        ckpt = artifact.read_checkpoint(last)
        run_id, epoch, saved = info["run_id"], ckpt["epoch"], ckpt["params"]
    except Exception as err:  # an unreadable leftover checkpoint: never resume from it
        return None, f"{last} is unreadable ({type(err).__name__})"
    if "model_version" in info:
        return None, f"the run in {models_dir}/ finished (registered as version {info['model_version']})"
    changed = _changed(params, saved, inputs)
    if changed:
        what = "data" if all(k.startswith("inputs.") for k in changed) else "params"
        return None, f"{last} was trained with other {what} ({', '.join(changed[:4])})"
    problem = tracking.recorded_run_problem(models_dir, info) if in_store else None
    if problem:
        return None, problem
    return run_id, f"resuming the interrupted run {run_id} after epoch {epoch}"


def unexported_run(params: Params, models_dir: Path, inputs: dict[str, str]) -> dict | None:
    """run.json of a finished, registered training of these params and inputs whose ONNX
    export was interrupted, else None: the training is done, only the export is missing."""
    info = tracking.read_run_file(models_dir)
    if info is None or not info.get(ONNX_PENDING) or not (models_dir / "best.pt").is_file():
        return None
    try:
        saved = artifact.read_checkpoint(models_dir / "last.pt")["params"]
    except Exception:  # no readable last.pt: which params trained best.pt is unknown
        return None
    return None if _changed(params, saved, inputs) else info


def initial_weights(params: Params, meta: dict, written: Params | None = None) -> tuple[dict | None, dict]:
    """The state dict `train.init` names (None for random weights) and what to log about it;
    it must be a model of this very architecture, width, classes and preprocessing (dropout
    may differ: it has no weights), and its weights must load into it (the one build).
    `written` are the params before the demo set's caps, so a refusal can say what capped them."""
    ref = params.train.init
    if not ref:
        return None, {}
    # Imported here: resolving model references (registry, checkpoints) belongs to this step alone.
    from emovision import distill
    from emovision.inference import load_artifact

    where = f"train.init {ref!r}"
    try:
        spec, stored = load_artifact(ref)
    except EmovisionError as err:
        raise ConfigError(f"{where}: {err}") from None
    wanted = model_spec(params, meta["classes"])
    theirs_args, our_args = ({k: v for k, v in s.arch_kwargs.items() if k != "dropout"} for s in (spec, wanted))
    for what, theirs, ours in (("architecture", spec.arch, wanted.arch),
                               ("model args", theirs_args, our_args),
                               ("classes", tuple(spec.classes), tuple(wanted.classes)),
                               ("preprocessing", spec.preprocess, wanted.preprocess)):
        if theirs != ours:
            capped = (f" (demo.width {params.demo.width} caps model.width {written.model.width} on the demo set)"
                      if written is not None and written.model.width != params.model.width else "")
            raise ConfigError(f"{where} has {what} {theirs}, but this training builds {ours}{capped}: "
                              f"training can start only from a model of the same shape")
    state_dict = artifact.build(spec, stored, where).state_dict()  # float32, wrapper prefixes gone
    digest = distill.weights_digest(state_dict)  # as distill hashes a teacher: the built model's
    print(f"starting from {ref} (weights {digest}) instead of random weights")
    return state_dict, {"init": ref, "init_digest": digest}


def train(params: Params, resume: bool = False, models_dir: Path | None = None,
          auto_resume: bool = False, export_onnx: bool = False) -> dict:
    """Train, log and register; returns run.json's record. With `export_onnx` (the ONNX export
    follows) the record says the export is pending, and with `auto_resume` a finished training
    whose export was interrupted is returned as it is, not trained again."""
    models_dir = Path(params.paths.models) if models_dir is None else models_dir
    reports = Path(params.paths.reports)
    meta, train_set, val_set = load_train_val(params)
    capped = params.for_dataset(meta["source"])
    if capped != params:
        off = ", distillation off (demo.distill: the teachers are FER2013 models)" if (
            capped.distill.teachers != params.distill.teachers) else ""
        if capped.train.init != params.train.init:
            off += ", train.init off (demo.init: it names a FER2013 model)"
        if capped.augment.app_view != params.augment.app_view:
            off += ", augment.app_view off (the app's detector is not made for drawn faces)"
        print(f"demo set: train.epochs {params.train.epochs} -> {capped.train.epochs}, model.width "
              f"{params.model.width} -> {capped.model.width}{off} (the demo section's caps; FER2013 is not capped)")
    written, params = params, capped
    # Everything is checked before anything is deleted or a run starts: the architecture
    # builds with these arguments and the outputs can be written where params say.
    probe = create_model(params.model.name, num_classes=len(meta["classes"]), **params.model.kwargs())
    for folder in (models_dir, reports):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} is a file, not a folder (paths in params.yaml)")
    # Imported here: the distillation code belongs to this step alone.
    from emovision.distill import soft_targets

    soft, distill_info = soft_targets(params, meta, train_set.x.device)
    if soft is not None:  # params.yaml's defaults distil on FER2013: say so, not only in MLflow
        print(f"distilling from {distill_info['distill']} ({params.distill.probs})")
    init, init_info = initial_weights(params, meta, written)
    print(f"training {params.model.name} on {meta['source']} ({describe_train_set(len(train_set), params.train)} / "
          f"{len(val_set):,} val) on {train_set.x.device}")

    inputs = input_digests(train_set, soft)
    done = unexported_run(params, models_dir, inputs) if (auto_resume and export_onnx) else None
    if done is not None:
        print(f"the run {done['run_id']} finished (registered as {done['model_name']} version "
              f"{done['model_version']}); only its ONNX export was interrupted: exporting it, not training again")
        return done
    # What needs no store is decided first: a --resume refused for it (no last.pt, other params)
    # opens none (a fresh project's mlflow.db was made, a server's outage said instead).
    run_id, why = interrupted_run(params, models_dir, inputs, in_store=False) if (resume or auto_resume) else (None, "")
    # Then the store: one that cannot log the run must not cost the previous model, and
    # whether the run run.json names can be resumed depends on it. That run is left to the
    # decision below (keep): resumed, or ended by end_abandoned_run when training starts over.
    if run_id is not None or not resume:
        open_store(keep=tracking.recorded_run_id(models_dir))
    if run_id is not None:
        run_id, why = interrupted_run(params, models_dir, inputs)
    if resume and run_id is None:
        raise DataError(f"cannot --resume: {why}; run without --resume to start over")
    if auto_resume:
        print(why if run_id else f"starting a new run ({why})")
    resume = run_id is not None
    if not resume:
        abandoned = tracking.end_abandoned_run(models_dir)
        if abandoned:
            print(f"the interrupted run {abandoned} is not continued: marked KILLED")
        for stale in ("last.pt", "best.pt"):  # a fresh run must not resume or register old weights
            (models_dir / stale).unlink(missing_ok=True)
    amp = resolve_amp(params.train.amp, train_set.x.device, probe=probe)  # fit() reuses the decision
    import mlflow

    with tracking.tracked_run(run_name=tracking.run_name(params, meta["source"]), run_id=run_id,
                              tags={**tracking.run_tags(meta), "stage": "train"}) as run:
        tracking.write_run_file(models_dir, {"run_id": run.info.run_id})
        mlflow.set_tags({"amp": amp.name, "amp_reason": amp.reason, "distill": distill_info["distill"]})
        if run_id is None:
            mlflow.log_params({**params.flat(), **inputs, "train.amp_resolved": amp.name})
            mlflow.log_params({"dataset.source": meta["source"],
                               **{f"dataset.{split}_count": sum(c.values())
                                  for split, c in meta["counts"].items()}})
            mlflow.log_dict(meta, "dataset_meta.json")
            tracking.log_dataset(meta, Path(params.data.prepared_dir))
            if soft is not None:
                mlflow.log_dict(distill_info, "teachers.json")
            if init is not None:
                mlflow.set_tags(init_info)

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)

        result = fit(params, train_set, val_set, meta["classes"], out_dir=models_dir, resume=resume,
                     on_epoch=log_epoch, dataset=meta["source"], soft=soft, init=init, inputs=inputs)
        history_csv, curves_png = reports / HISTORY_CSV, reports / CURVES_PNG
        write_history(result["history"], history_csv)
        plots.training_curves(result["history"], curves_png)
        mlflow.log_artifact(str(curves_png))
        mlflow.log_artifact(str(history_csv))
        spec, state_dict = artifact.load_checkpoint(models_dir / "best.pt")
        mlflow.set_tag("stopped", result["stopped"])
        # The registered model is best.pt's EMA weights; its val accuracies (with and without
        # flip TTA) come from the one scoring function, as evaluate and the gate compute them.
        val = {k: spec.metrics[k] for k in ("val_acc", "val_acc_tta")}
        # A run killed after registering best.pt but before run.json said so resumes with
        # nothing left to train: its version is reused, not registered a second time.
        registered = tracking.registered_version(params.registry.model_name, run.info.run_id,
                                                 spec.epoch) if resume else None
        if registered is None:
            model_info = serving.log_model(spec, state_dict)
            mlflow.log_metrics({"best_epoch": result["best_epoch"], **{f"best_{k}": v for k, v in val.items()}},
                               model_id=model_info.model_id)  # the run's and its logged model's
            version = tracking.register_model(
                params.registry.model_name, model_info,
                tags={"dataset": meta["source"], "arch": params.model.name, "epoch": spec.epoch,
                      **{k: f"{v:.4f}" for k, v in val.items()}})
            model_id = model_info.model_id
        else:
            version, model_id = registered
        info = {"run_id": run.info.run_id, "model_name": params.registry.model_name,
                "model_version": version, "model_id": model_id, "dataset": meta["source"],
                "best_val_acc": result["best_val_acc"], "best_epoch": result["best_epoch"], **val,
                **({ONNX_PENDING: True} if export_onnx else {})}
        tracking.write_run_file(models_dir, info)
    print(f"best val_acc {result['best_val_acc']:.4f} at epoch {result['best_epoch']}; "
          f"registered {params.registry.model_name} version {version} (run {run.info.run_id})")
    return info


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in paths.models (last.pt, same MLflow run); "
                            "an error when there is none")
    group.add_argument("--auto-resume", action="store_true",
                       help="resume when last.pt is an unfinished run of the same params, else start "
                            "over (what dvc.yaml runs, so an interrupted `dvc repro` continues)")
    parser.add_argument("--export-onnx", action="store_true",
                        help="then export best.pt to ONNX and check it (stages.export; what dvc.yaml runs)")
    args, params = parse(parser, argv)
    models_dir = Path(params.paths.models)
    # Two trainings in one models/ would delete, overwrite and register each other's
    # checkpoints: the second stops here, before it reads or touches anything.
    with fileio.folder_lock(models_dir, "another training", "python -m stages.train or dvc repro"):
        info = train(params, resume=args.resume, auto_resume=args.auto_resume, models_dir=models_dir,
                     export_onnx=args.export_onnx)
        if args.export_onnx:  # a step of this stage: fer.onnx lies inside its models/ output
            export_onnx_step(params)
            tracking.write_run_file(models_dir, {k: v for k, v in info.items() if k != ONNX_PENDING})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

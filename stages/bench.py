"""Stage 4: speed of training, inference and the real-time pipeline -> <paths.reports>/.

speed.json (DVC metrics) holds the three numbers people compare: `lat_ms` (classifier ms per
face, batch 1), `fps` (frames/s of the whole real-time pipeline) and `train_ips` (training
images/s, augmented, in the precision training uses); bench.json holds every figure and the
environment (not a DVC metric, so `dvc metrics show` stays readable).

Every figure is a median over `bench.repeats` timed repetitions (after a warm-up), so a
shared, noisy machine gives stable numbers. Logged into the training run in MLflow.
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from emovision import fileio, livecheck, progress, tracking
from emovision.config import Params
from emovision.data.augment import augment_batch
from emovision.data.prepared import load_meta
from emovision.errors import DataError, EmovisionError, cli_main
from emovision.device import APP_BACKEND, resolve_device, use_cpu_threads
from emovision.inference import load_classifier
from emovision.models import count_macs, count_params, create_model
from emovision.preprocess import normalize, value_range
from emovision.training import cpu_has_bf16, images_per_epoch, preprocess_config, resolve_amp
from stages import open_store, parse, stage_parser

BENCH_JSON = "bench.json"  # inside paths.reports
SPEED_JSON = "speed.json"
LATENCY_SAMPLES = 50  # batch-1 calls per repeat, for median and p95


def timed(fn: Callable[[], None], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Seconds per call of `fn`, one warm-up call first."""
    fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def train_throughput(params: Params, device: torch.device, sync) -> dict:
    """Images/s of full training steps on the same batches: augmented in fp32 and in bf16
    side by side (with which one `train.amp: auto` picks and why), and without augmentation
    in the configured precision. The series are interleaved round-robin, so a busy machine
    slows them alike."""
    cfg, bs = params.train, params.train.batch_size
    model = create_model(params.model.name, **params.model.kwargs()).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (params.bench.train_batches, bs, 1, 48, 48), dtype=torch.uint8,
                           generator=gen).to(device)
    labels = torch.randint(0, 7, (params.bench.train_batches, bs), generator=gen).to(device)
    pre = preprocess_config(params)
    auto = resolve_amp("auto", device, probe=model)
    configured = resolve_amp(cfg.amp, device)
    # Where oneDNN has no bf16 (AVX2 and older CPUs) autocast runs ATen's generic kernels:
    # timing them cost 60-70 s of a `dev.sh run` (210 s -> 140 s, docs/cpu.md) for a precision auto never picks.
    bf16_runs = device.type != "cpu" or cpu_has_bf16()

    def epoch(augment: bool, dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            for x, y in zip(pixels, labels):
                x = normalize(x, pre)
                if augment:
                    x = augment_batch(x, params.augment, gen, value_range(pre))
                with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    precisions = {"fp32": None, **({"bf16": torch.bfloat16} if bf16_runs else {}),
                  configured.name: configured.dtype}
    series = {name: epoch(True, dtype) for name, dtype in precisions.items()}
    series["bare"] = epoch(False, configured.dtype)
    for run in series.values():  # warm-up
        run()
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in series}
    for _ in range(params.bench.repeats):
        for name, run in series.items():
            start = time.perf_counter()
            run()
            sync()
            seconds[name].append(time.perf_counter() - start)
    images = params.bench.train_batches * bs
    rate = {name: images / statistics.median(s) for name, s in seconds.items()}
    result = {"images_per_s_fp32": rate["fp32"], "images_per_s_bf16": rate.get("bf16"),
              "amp_auto": auto.name, "amp_auto_reason": auto.reason,
              "amp_auto_vs_fastest": rate[auto.name] / max(rate.get(p, 0.0) for p in ("fp32", "bf16")),
              "amp": configured.name,
              "images_per_s_augmented": rate[configured.name], "images_per_s_bare": rate["bare"]}
    result["augmentation_overhead"] = result["images_per_s_bare"] / result["images_per_s_augmented"]
    return result


def inference_speed(clf, params: Params, sync) -> dict:
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 48, 48), dtype=np.uint8)
    many = rng.integers(0, 256, (params.bench.batch_size, 48, 48), dtype=np.uint8)
    lat = []
    for _ in range(params.bench.repeats):
        lat += timed(lambda: clf.predict_proba(one), LATENCY_SAMPLES, sync)
    # at the batch its figure names, not the classifier's default (scoring.CPU_BATCH on a CPU)
    batch = statistics.median(timed(lambda: clf.predict_proba(many, batch_size=len(many)), params.bench.repeats, sync))
    return {"latency_ms_batch1_median": 1000 * statistics.median(lat),
            "latency_ms_batch1_p95": 1000 * float(np.percentile(lat, 95)),
            f"images_per_s_batch{params.bench.batch_size}": params.bench.batch_size / batch,
            "params": count_params(clf.model), "macs": count_macs(clf.model)}


BACKEND_BATCHES = (1, 64)


def backend_latency(clf, models_dir: Path, params: Params) -> dict | None:
    """PyTorch vs ONNX Runtime on the same faces, interleaved call by call (same load on the
    machine for both): median ms per call at batch 1 and 64, flip TTA as the app runs it."""
    from emovision.inference import load_classifier as load

    onnx_file = models_dir / "fer.onnx"
    try:  # the exported file when stages.export wrote one, else an export of best.pt now
        onnx_clf = load(str(onnx_file) if onnx_file.is_file() else str(models_dir / "best.pt"), backend="onnx")
    except EmovisionError as err:  # onnxruntime not installed: the PyTorch figures stand alone
        print(f"bench: no ONNX figures ({err})")
        return None
    rng = np.random.default_rng(0)
    out = {"tta": bool(clf.tta), "onnx_model": str(onnx_file) if onnx_file.is_file() else "exported from best.pt"}
    for n in BACKEND_BATCHES:
        faces = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
        times = {"torch": [], "onnx": []}
        for _ in range(params.bench.repeats * (LATENCY_SAMPLES if n == 1 else 2)):
            for name, model in (("torch", clf), ("onnx", onnx_clf)):
                started = time.perf_counter()
                model.predict_proba(faces, batch_size=n)  # both at batch n (PyTorch's CPU default is 32)
                times[name].append(time.perf_counter() - started)
        for name, values in times.items():
            out[f"{name}_ms_batch{n}"] = 1000 * statistics.median(values)
    return out


def realtime(clf, params: Params) -> dict | None:
    """Per-frame time of detect / classify / draw on a generated 640x480 video with a real face."""
    try:
        from emovision.webcam import benchmark_pipeline
        from emovision.webcam import make_benchmark_video
    except ImportError:  # the webcam app is optional for the pipeline
        return None
    with tempfile.TemporaryDirectory() as tmp:
        video = make_benchmark_video(Path(tmp) / "face.mp4", frames=params.bench.video_frames)
        runs = [benchmark_pipeline(clf, video) for _ in range(max(1, params.bench.repeats // 2))]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}


def bench(params: Params, models_dir: Path | None = None) -> dict:
    models_dir = Path(params.paths.models) if models_dir is None else models_dir
    bench_json = Path(params.paths.reports) / BENCH_JSON
    ckpt = models_dir / "best.pt"
    if not ckpt.is_file():  # checked before minutes of measuring
        raise DataError(f"no trained model at {ckpt} (run `python -m stages.train` first)")
    training = tracking.read_run_file(models_dir)  # the run the figures are logged into, if any
    if training is not None:
        open_store()  # the store answers: checked before minutes of timing and reports/ rewritten
        tracking.check_recorded_run(models_dir, training)
    meta = load_meta(Path(params.data.prepared_dir))
    params = params.for_dataset(meta["source"])  # the model and epochs train really used
    if params.train.threads > 0 and (note := use_cpu_threads(params.train.threads)):
        print(note)
    device = resolve_device(params.base.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    progress.info(f"bench 1/4: training images/s, fp32 and bf16 side by side ({params.bench.repeats} repeats "
                  f"of {params.bench.train_batches} batches)")
    train = train_throughput(params, device, sync)
    n_train = images_per_epoch(sum(meta["counts"]["train"].values()), params.train)  # what an epoch trains on
    epochs = params.train.epochs
    train["est_epoch_s"] = n_train / train["images_per_s_augmented"]
    train["est_total_s"] = train["est_epoch_s"] * epochs
    clf = load_classifier(str(ckpt), params.base.device)
    progress.info("bench 2/4: inference latency and throughput")
    inference = inference_speed(clf, params, sync)
    progress.info(f"bench 3/4: the real-time pipeline on a {params.bench.video_frames}-frame video")
    app_clf = load_classifier(str(ckpt), params.base.device, backend=APP_BACKEND)  # as the webcam app runs it
    live = realtime(app_clf, params)
    progress.info("bench 4/4: ONNX Runtime latency, and the live app's accuracy on rendered PublicTest faces")
    backends = backend_latency(clf, models_dir, params)
    consistency = livecheck.bench_report(clf, Path(params.data.prepared_dir), meta["source"])
    report = {
        "train": train,
        "inference": inference,
        "realtime": live,
        "backends": backends,
        # the app's accuracy on PublicTest faces rendered into frames vs direct (issue 11)
        "live_consistency": consistency,
        "env": {"device": str(device), "threads": torch.get_num_threads(),
                "app_backend": app_clf.info.get("backend", "torch"),
                "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                "python": platform.python_version(), "repeats": params.bench.repeats,
                **({"gpu": torch.cuda.get_device_name()} if device.type == "cuda" else {})},
    }
    # Short names and few digits keep two experiments in 120 columns of `dvc exp show`.
    speed = {"lat_ms": round(report["inference"]["latency_ms_batch1_median"], 2),
             **({"fps": round(report["realtime"]["end_to_end_fps"])} if report["realtime"] else {}),
             "train_ips": round(report["train"]["images_per_s_augmented"])}
    fileio.write_json(bench_json, report)
    fileio.write_json(Path(params.paths.reports) / SPEED_JSON, speed)
    t, i = report["train"], report["inference"]
    bf16 = "not measured" if t["images_per_s_bf16"] is None else f"{t['images_per_s_bf16']:.0f} img/s"
    print(f"train precision: fp32 {t['images_per_s_fp32']:.0f} img/s, bf16 {bf16}; auto picks {t['amp_auto']} "
          f"(x{t['amp_auto_vs_fastest']:.2f} of the faster; {t['amp_auto_reason']})")
    print(f"train ({t['amp']}): {t['images_per_s_augmented']:.0f} img/s augmented, {t['images_per_s_bare']:.0f} bare "
          f"(x{t['augmentation_overhead']:.2f}); ~{t['est_epoch_s']:.0f}s/epoch, ~{t['est_total_s'] / 60:.1f} min "
          f"for {epochs} epochs")
    print(f"inference: {i['latency_ms_batch1_median']:.2f} ms/face median (p95 {i['latency_ms_batch1_p95']:.2f}), "
          f"{i[f'images_per_s_batch{params.bench.batch_size}']:.0f} faces/s at batch {params.bench.batch_size}; "
          f"{i['params']:,} params, {i['macs'] / 1e6:.1f} M MACs")
    if report["backends"]:
        b = report["backends"]
        print("PyTorch vs ONNX Runtime (ms per call, median, TTA {}): ".format("on" if b["tta"] else "off")
              + ", ".join(f"batch {n}: {b[f'torch_ms_batch{n}']:.2f} vs {b[f'onnx_ms_batch{n}']:.2f}"
                          for n in BACKEND_BATCHES))
    if "skipped" not in report["live_consistency"]:
        print("live consistency: " + livecheck.summary_line(report["live_consistency"]))
    if report["realtime"]:
        print("realtime: " + ", ".join(f"{k} {v:.2f}" for k, v in report["realtime"].items()))
    if training is not None:
        import mlflow

        with tracking.tracked_run(run_id=training["run_id"]):
            flat = {f"bench_{section}_{k}": v for section in ("train", "inference", "realtime")
                    for k, v in (report[section] or {}).items() if isinstance(v, (int, float))}
            mlflow.log_metrics(flat)
            mlflow.log_artifact(str(bench_json))
    return report


@cli_main
def main(argv: list[str] | None = None) -> int:
    _, params = parse(stage_parser(__doc__.splitlines()[0]), argv)
    bench(params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

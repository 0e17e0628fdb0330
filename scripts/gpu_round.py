"""One timed GPU round for issue 14: diverse teachers, their cached outputs, distilled students.

    python scripts/gpu_round.py --data .gpu/fer-trainval.tar.xz --meta .gpu/meta.json --out OUT --budget 540

.gpu/ (git-ignored) holds what travels to the GPU machine: a tar.xz of the Kaggle folders
train/ and test/ with the PublicTest_* images only (39 MB), and data/prepared/meta.json.

For a borrowed GPU with a few minutes on it and no MLflow or DVC there. Everything runs
inside one wall-clock budget:

1. the archive (FER2013 Training + PublicTest only: PrivateTest never reaches this machine)
   is read with the project's own folder reader into a prepared folder;
2. phase 1 trains the TEACHERS side by side, one process each, every one with
   `emovision.training.fit` (the function `stages.train` runs) on params.yaml plus the
   listed overrides; each process first measures its own speed beside the others and
   sets `train.epochs` so that its cosine schedule ends by the phase's deadline;
3. each teacher becomes a model folder (`ship_model.ship_teacher`: float16 weights,
   PublicTest figures), the teachers for distillation are chosen greedily on PublicTest
   (committed teachers included), and their outputs are cached as `stages.teach` does
   (`distill.teacher_probs` -> `distill.write_cache`);
4. phase 2 distils the STUDENTS (params.yaml's recipe, other seeds, alpha, width) from it.

What exists is packed into OUT as soon as it exists (tar parts of at most 15 MiB), so a
round cut short still returns its teachers. Back on the CPU machine, `ship_model.py`
scores the results and PrivateTest is scored once, for a shipped model only.
`--smoke` runs the same flow on a few hundred images (a check of the script on a CPU);
`--teachers` / `--students` take JSON {name: {param: value}} instead of the lists below.

Measured on an NVIDIA H200 (2026-11-27; teachers/README.md): seven trainings side by side
at batch 128 get 3,300-9,000 images/s each, too few epochs in minutes; three at batch
256-512 get 11,000-22,000 each (a w48 `cnn_small` ran 119 epochs in 160 s). Prefer a few
large-batch trainings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

OLD_AUG = {"augment.rotation": 10.0, "augment.scale": 0.1, "augment.brightness": 0.0, "augment.aspect": 0.0}
# name -> overrides of params.yaml (whose augmentation is the live-matched one)
TEACHERS = {
    "gpu-r64-s1": {"model.name": "resnet_fer", "model.width": 64, "base.seed": 1, **OLD_AUG},
    "gpu-r48-s2-live": {"model.name": "resnet_fer", "model.width": 48, "base.seed": 2},
    "gpu-r32-s3": {"model.name": "resnet_fer", "model.width": 32, "base.seed": 3, **OLD_AUG},
    "gpu-r32-s4-mix": {"model.name": "resnet_fer", "model.width": 32, "base.seed": 4, "train.mixup": 0.3, **OLD_AUG},
    "gpu-c96-s5": {"model.width": 96, "base.seed": 5, "model.dropout": 0.4, **OLD_AUG},
    "gpu-c64-s6-live": {"model.width": 64, "base.seed": 6},
    "gpu-c48-s8": {"base.seed": 8, **OLD_AUG},
}
COMMITTED = ["teachers/cnn-w48-s42", "teachers/cnn-w48-s7-live", "teachers/cnn-w48-s3-live"]
STUDENTS = {
    "student-w48-s42": {},
    "student-w48-s7": {"base.seed": 7},
    "student-w48-s3": {"base.seed": 3},
    "student-w48-s42-a08": {"distill.alpha": 0.8},
    "student-w32-s42": {"model.width": 32},
}
PROBS = "teachers/gpu-probs.npz"
TRAIN_DIGEST = "155ec283dfd01849"  # emovision.data.prepared.split_digest of the prepared Training split here
PART_BYTES = 16 * 2**20 - 2**16  # the device returns files of up to 16 MiB
OUT_BYTES = 60 * 2**20  # ... and 64 MiB in all
MAX_DISTILL_TEACHERS = 6
ENSEMBLE_PARAMS = 5_000_000
PROBE_IMAGES = (1280, 6400)


def log(*parts) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


# ------------------------------------------------------------------ data

def prepare(archive: Path, meta: Path, out: Path, smoke: bool) -> dict:
    from emovision.data.fer2013 import read_folders
    from emovision.data.prepared import split_digest

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["tar", "-xJf", str(archive), "-C", tmp], check=True)
        splits = read_folders(Path(tmp)).splits
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for split in ("train", "val"):
        x, y = splits[split]
        if smoke:
            keep = np.random.default_rng(0).permutation(len(y))[:600 if split == "train" else 300]
            x, y = x[np.sort(keep)], y[np.sort(keep)]
        np.savez(out / f"{split}.npz", x=np.ascontiguousarray(x, np.uint8), y=y.astype(np.int64))
        digests[split] = split_digest(x, y)
    shutil.copy(meta, out / "meta.json")
    log(f"prepared {len(splits['train'][1]):,} train / {len(splits['val'][1]):,} val; digests {digests} "
        f"(the CPU machine's: train {TRAIN_DIGEST})")
    return digests


# ------------------------------------------------------------------ one training (a subprocess)

def worker(args: argparse.Namespace) -> int:
    import torch

    from emovision.config import load_params
    from emovision.distill import soft_targets
    from emovision.training import fit, load_train_val

    overrides = json.loads(args.overrides)
    run_dir = Path(args.run_dir)
    params = load_params(ROOT / "params.yaml").replace(**overrides)
    meta, train_set, val_set = load_train_val(params)
    soft, _ = soft_targets(params, meta, train_set.x.device)  # as stages.train builds them
    # Start the speed probe together with the other processes of this phase: they share the GPU.
    (run_dir / "ready").touch()
    waited = time.time()
    while len(list(run_dir.parent.glob("*/ready"))) < args.n_workers and time.time() - waited < 90:
        time.sleep(0.2)
    times = []
    for n in (256, *PROBE_IMAGES):  # the first, untimed, pays CUDA's and cuDNN's start-up
        probe = params.with_epochs(1, **{"train.max_train_images": n})
        started = time.time()
        fit(probe, train_set, val_set, meta["classes"], dataset="fer2013", soft=soft)
        if train_set.x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.time() - started)
    times = times[1:]
    per_image = max((times[1] - times[0]) / (PROBE_IMAGES[1] - PROBE_IMAGES[0]), 1e-6)
    fixed = max(times[0] - PROBE_IMAGES[0] * per_image, 0.0)  # evaluation + setup per epoch
    n_train = len(train_set) if params.train.max_train_images <= 0 else min(len(train_set), params.train.max_train_images)
    epoch_s = n_train * per_image + fixed
    left = args.deadline - time.time()
    epochs = int(max(2, min(params.train.epochs if args.keep_epochs else 400, 0.9 * left / epoch_s)))
    log(f"{run_dir.name}: {1e6 * per_image:.1f} us/image, ~{epoch_s:.1f} s/epoch beside the others, "
        f"{left:.0f} s left -> {epochs} epochs")
    params = params.with_epochs(epochs)

    def guard(epoch: int, metrics: dict) -> bool:
        return time.time() + 1.3 * metrics["epoch_s"] > args.deadline

    result = fit(params, train_set, val_set, meta["classes"], out_dir=run_dir, dataset="fer2013",
                 soft=soft, on_epoch=guard)
    summary = {k: result[k] for k in ("best_val_acc", "best_epoch", "epochs_run", "stopped", "history")}
    summary.update(planned_epochs=epochs, epoch_s_probe=epoch_s, amp=result["amp"].name, overrides=overrides)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=1))
    log(f"{run_dir.name}: best PublicTest {result['best_val_acc']:.4f} at epoch {result['best_epoch']} "
        f"of {result['epochs_run']} ({result['stopped']})")
    return 0


def run_phase(configs: dict[str, dict], common: dict, runs: Path, deadline: float, smoke: bool) -> dict:
    procs = {}
    for name, overrides in configs.items():
        run_dir = runs / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--run-dir", str(run_dir),
               "--overrides", json.dumps({**common, **overrides}), "--deadline", str(deadline),
               "--n-workers", str(len(configs))] + (["--keep-epochs"] if smoke else [])
        procs[name] = subprocess.Popen(cmd, stdout=open(run_dir / "log.txt", "w"), stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline + 20 - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            log(f"{name}: killed at the phase deadline")
        tail = (runs / name / "log.txt").read_text().strip().splitlines()[-2:]
        log(f"{name}: exit {proc.returncode}; " + " | ".join(tail))
    results = {}
    for name in configs:
        if (runs / name / "result.json").is_file():
            results[name] = json.loads((runs / name / "result.json").read_text())
        elif (runs / name / "best.pt").is_file():  # cut short after an epoch: its best epoch still counts
            from emovision import artifact

            spec = artifact.read_checkpoint(runs / name / "best.pt")
            results[name] = {"best_val_acc": spec.get("metrics", {}).get("val_acc", 0.0), "stopped": "killed"}
    return results


# ------------------------------------------------------------------ teachers -> distillation targets

def val_probs(refs: list[str], prepared: Path, device: str) -> dict[str, tuple[np.ndarray, int]]:
    from emovision.data.prepared import load_split
    from emovision.inference import load_classifier
    from emovision.models import count_params

    x, _ = load_split(prepared, "val")
    out = {}
    for ref in refs:
        clf = load_classifier(ref, device)
        out[ref] = (clf.predict_proba(x, tta=True), count_params(clf.model))
    return out


def choose(probs: dict[str, tuple[np.ndarray, int]], y: np.ndarray) -> dict:
    acc = {ref: float((p.argmax(1) == y).mean()) for ref, (p, _) in probs.items()}

    def ens_acc(members) -> float:
        return float((np.mean([probs[m][0] for m in members], 0).argmax(1) == y).mean())

    chosen = [max(acc, key=acc.get)]
    while len(chosen) < MAX_DISTILL_TEACHERS:
        best = max((r for r in probs if r not in chosen), key=lambda r: ens_acc(chosen + [r]), default=None)
        if best is None or ens_acc(chosen + [best]) <= ens_acc(chosen):
            break
        chosen.append(best)
    small = []
    for k in (2, 3, 4):
        for combo in itertools.combinations(probs, k):
            size = sum(probs[m][1] for m in combo)
            if size <= ENSEMBLE_PARAMS:
                small.append({"members": list(combo), "params": size, "publictest_tta": ens_acc(combo)})
    small.sort(key=lambda s: -s["publictest_tta"])
    return {"single_publictest_tta": acc, "distill_teachers": chosen,
            "distill_ensemble_publictest_tta": ens_acc(chosen), "ensembles_under_5m": small[:8]}


def pack(groups: list[list[Path]], out: Path, stem: str, budget: int) -> int:
    """Tar the groups of paths (relative to ROOT), in order, while they fit in `budget` bytes,
    into out/stem.tar.NN parts of at most PART_BYTES each; returns the bytes written."""
    with tempfile.TemporaryDirectory() as tmp:
        whole, used, left_out = Path(tmp) / "all.tar", 0, []
        with tarfile.open(whole, "w") as tar:
            for group in groups:
                size = sum(p.stat().st_size + 2048 for g in group for p in ([g] if g.is_file() else g.rglob("*"))
                           if p.is_file())
                if used + size > budget:
                    left_out += [str(g.relative_to(ROOT)) for g in group]
                    continue
                used += size
                for g in group:
                    if g.exists():
                        tar.add(g, arcname=str(g.relative_to(ROOT)))
        data = whole.read_bytes()
    for i in range(0, len(data), PART_BYTES):
        (out / f"{stem}.tar.{i // PART_BYTES:02d}").write_bytes(data[i:i + PART_BYTES])
    log(f"packed {stem}: {len(data) / 2**20:.1f} MiB in {-(-len(data) // PART_BYTES)} part(s); left out {left_out}")
    return len(data)


def distill_targets(info: dict, runs: Path, prepared: Path, out: Path, device: str, smoke: bool) -> tuple[list, int]:
    """Teacher folders, the choice on PublicTest and the cached teacher outputs, packed into OUT."""
    import ship_model
    from emovision import artifact, distill
    from emovision.data.prepared import load_split

    made = []
    for name in info["teachers"]:
        folder = ROOT / "teachers" / name
        shutil.rmtree(folder, ignore_errors=True)
        spec, state_dict = artifact.load(runs / "teachers" / name / "best.pt")
        ship_model.ship_teacher(folder, spec, state_dict, prepared, device)
        made.append(folder)
    x_val, y_val = load_split(prepared, "val")
    refs = [str(f.relative_to(ROOT)) for f in made] + ([] if smoke else COMMITTED)
    probs = val_probs(refs, prepared, device)
    info["choice"] = choose(probs, y_val)
    log("choice:", json.dumps({k: v for k, v in info["choice"].items() if k != "ensembles_under_5m"}))
    log("ensembles <= 5M:", json.dumps(info["choice"]["ensembles_under_5m"][:3]))
    x_tr, y_tr = load_split(prepared, "train")
    meta = json.loads((prepared / "meta.json").read_text())
    chosen = info["choice"]["distill_teachers"]
    distill.write_cache(ROOT / PROBS, distill.teacher_probs(chosen, x_tr, y_tr, meta["classes"], device))
    (out / "summary.json").write_text(json.dumps(info, indent=1))
    notes = [d / f for d in sorted((runs / "teachers").iterdir()) for f in ("log.txt", "result.json")]
    by_choice = sorted(made, key=lambda f: str(f.relative_to(ROOT)) not in chosen)
    return chosen, pack([notes, [ROOT / PROBS]] + [[f] for f in by_choice], out, "teachers", OUT_BYTES)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--run-dir", required=True)
    w.add_argument("--overrides", required=True)
    w.add_argument("--deadline", type=float, required=True)
    w.add_argument("--n-workers", type=int, required=True)
    w.add_argument("--keep-epochs", action="store_true")
    p.add_argument("--data", type=Path, default=ROOT / ".gpu/fer-trainval.tar.xz")
    p.add_argument("--meta", type=Path, default=ROOT / ".gpu/meta.json")
    p.add_argument("--out", type=Path, required=False)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole round")
    p.add_argument("--phase1", type=float, default=0.52, help="share of the budget for the teachers")
    p.add_argument("--device", default="cuda")
    p.add_argument("--teachers", type=json.loads, default=None,
                   help="JSON {name: {param: value}} instead of TEACHERS")
    p.add_argument("--students", type=json.loads, default=None,
                   help="JSON {name: {param: value}} instead of STUDENTS ({} for none)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    t0 = time.time()
    deadline = t0 + args.budget
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / ".gpu" / "round"
    shutil.rmtree(work, ignore_errors=True)
    prepared, runs = work / "prepared", work / "runs"
    import torch

    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpus": os.cpu_count(), "budget_s": args.budget}
    log(json.dumps(info))
    info["digests"] = prepare(args.data, args.meta, prepared, args.smoke)
    common = {"base.device": args.device, "data.prepared_dir": str(prepared), "train.threads": 2,
              "distill.teachers": [], "distill.alpha": 0.0}
    if args.smoke:
        common.update({"train.epochs": 1, "evaluate.batch_size": 128})
    teachers = TEACHERS if args.teachers is None else args.teachers
    students = STUDENTS if args.students is None else args.students
    if args.smoke:
        teachers, students = dict(list(teachers.items())[:2]), dict(list(students.items())[:1])
    phase1_end = t0 + args.budget * args.phase1
    info["teachers"] = run_phase(teachers, common, runs / "teachers", phase1_end, args.smoke)
    # ---- teacher folders, choice on PublicTest, cached outputs (on the CPU if the GPU path fails)
    os.chdir(ROOT)  # teacher references are relative to the project root, as in params.yaml
    for device in (args.device, "cpu"):
        try:
            chosen, used = distill_targets(info, runs, prepared, out, device, args.smoke)
            break
        except Exception:
            import traceback

            traceback.print_exc()
            log(f"teacher post-processing failed on {device}")
    else:
        return 1
    if not students:
        info["elapsed_s"] = time.time() - t0
        (out / "summary.json").write_text(json.dumps(info, indent=1))
        log(f"round done in {info['elapsed_s']:.0f} s (no students)")
        return 0
    # ---- students
    student_common = {**common, "distill.teachers": chosen, "distill.probs": PROBS, "distill.alpha": 0.5}
    info["students"] = run_phase(students, student_common, runs / "students", deadline - 30, args.smoke)
    info["elapsed_s"] = time.time() - t0
    (out / "summary.json").write_text(json.dumps(info, indent=1))
    notes = [d / f for d in sorted((runs / "students").iterdir()) for f in ("log.txt", "result.json")]
    best_first = sorted(info["students"], key=lambda n: -info["students"][n]["best_val_acc"])
    pack([notes] + [[runs / "students" / n / "best.pt"] for n in best_first], out, "students", OUT_BYTES - used)
    log(f"round done in {info['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

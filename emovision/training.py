"""Training: in-memory batches, batched augmentation, fit / train_one_epoch.

The whole prepared split lives on the training device as one uint8 tensor; a batch is an
index slice of a seeded permutation, preprocessed and augmented with batched tensor ops.
No DataLoader workers, no per-sample Python in the hot loop.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from emovision import artifact, progress, scoring
from emovision.artifact import ModelSpec
from emovision.config import AugmentParams, Params, TrainParams
from emovision.data.augment import augment_batch_flips
from emovision.device import resolve_device, use_cpu_threads
from emovision.errors import TrainingDiverged
from emovision.models import create_model
from emovision.preprocess import PreprocessConfig, normalize, prepare_pixels, value_range

MIXUP_ALPHA = 0.2  # Beta(0.2, 0.2): mostly light mixes, as in the mixup paper's ImageNet runs


@dataclass(frozen=True)
class SoftTargets:
    """Distillation targets: cached teacher probabilities already softened at `temperature`,
    (views, N, C) on the training device, view 1 being the mirrored image (emovision.distill)."""

    probs: torch.Tensor
    alpha: float
    temperature: float


@dataclass
class SplitTensors:
    """A prepared split on the device: uint8 pixels (N, 1, H, W) and int64 labels (N,), plus for
    the train split the app's crop of each face when `augment.app_view` uses them
    (emovision.data.app_views; same shape as x)."""

    x: torch.Tensor
    y: torch.Tensor
    app_x: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


def to_tensors(x: np.ndarray, y: np.ndarray, pre: PreprocessConfig, device: torch.device) -> SplitTensors:
    """Apply the uint8 part of the shared preprocessing once, then move to the device."""
    pixels = torch.from_numpy(prepare_pixels(x, pre)).unsqueeze(1)
    return SplitTensors(pixels.to(device), torch.from_numpy(np.asarray(y, np.int64)).to(device))


def input_digests(train: SplitTensors, soft: SoftTargets | None = None) -> dict[str, str]:
    """Short hashes of what a training learns from besides its params, as `inputs.*` keys: the
    train split's pixels and labels, the app's crops (augment.app_view) and the teachers'
    targets (distillation). Checkpoints record them, so a run is resumed only on the same data."""
    from emovision.data.prepared import array_digest

    def digest(*tensors: torch.Tensor) -> str:
        return array_digest(*(t.detach().cpu().numpy() for t in tensors))

    out = {"inputs.train": digest(train.x, train.y)}
    if train.app_x is not None:
        out["inputs.app_views"] = digest(train.app_x)
    if soft is not None:
        out["inputs.teacher_probs"] = digest(soft.probs)
    return out


def load_train_val(params: Params) -> tuple[dict[str, Any], SplitTensors, SplitTensors]:
    """Prepared meta plus the train and val splits on the configured device."""
    from emovision.data.prepared import load_meta, load_split

    if params.train.threads > 0 and (note := use_cpu_threads(params.train.threads)):
        print(note)
    device = resolve_device(params.base.device)
    prepared = Path(params.data.prepared_dir)
    meta = load_meta(prepared)
    pre = preprocess_config(params)
    x, y = load_split(prepared, "train")
    train = to_tensors(x, y, pre, device)
    if params.app_views_on(meta["source"]):
        from emovision.data.app_views import load_app_views

        views = load_app_views(params.data.app_views, x, y)
        train.app_x = to_tensors(views.x, y, pre, device).x
        print(f"app views: {params.data.app_views}, {views.found.mean():.1%} of {len(y):,} faces found by the "
              f"app's detector; {params.augment.app_view:.0%} of the images drawn from them, so "
              f"{params.augment.app_view * views.found.mean():.1%} shown as the app's crop (a missed face keeps its own)")
    return meta, train, to_tensors(*load_split(prepared, "val"), pre, device)


def preprocess_config(params: Params) -> PreprocessConfig:
    return PreprocessConfig(clahe=params.preprocess.clahe, mean=params.preprocess.mean,
                            std=params.preprocess.std)


# CPU flags of native bf16 arithmetic: AVX512_BF16 (Cooper Lake, Zen 4 and newer) and AMX
# (Sapphire Rapids and newer). Plain AVX-512 runs bf16 by conversion: cnn_small trained 2.6x
# slower in bf16 than in fp32 on such a CPU (issue 12), 1.9x faster on one with avx512_bf16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_SPEEDUP = 1.05  # without native bf16, it must measure this much faster (else noise decides)
PROBE_BATCH, PROBE_STEPS, PROBE_ROUNDS = 32, 2, 3  # start-up measurement: about 400 images


@dataclass(frozen=True)
class AmpChoice:
    """The autocast dtype training runs in (None: fp32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def choose_cpu_amp(flags: set[str], bf16_supported: bool,
                   measure: Callable[[], tuple[float, float]] | None) -> AmpChoice:
    """`train.amp: auto` on a CPU, decided by fact: bf16 where the CPU has native bf16, else
    only when `measure()` -> (fp32 images/s, bf16 images/s) shows bf16 clearly faster."""
    # oneDNN first: the flags say what the CPU has, oneDNN what it may use. Capped below
    # AVX-512 (ONEDNN_MAX_CPU_ISA, a hypervisor that hides it) bf16 falls back to ATen's
    # generic kernels: cnn_small trained at 71 img/s in bf16 vs 581 in fp32 with avx512_bf16 listed.
    if not bf16_supported:
        return AmpChoice(None, "fp32: this CPU cannot run bf16 (no AVX-512 in oneDNN)")
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return AmpChoice(torch.bfloat16, f"bf16: native bf16 on this CPU ({', '.join(native)})")
    if measure is None:
        return AmpChoice(None, "fp32: no native bf16 (no avx512_bf16 / amx_bf16) and not measured")
    fp32, bf16 = measure()
    verdict = (f"no native bf16; measured {bf16:.0f} img/s in bf16 vs {fp32:.0f} in fp32 "
               f"(x{bf16 / fp32:.2f}, bf16 needs x{BF16_MIN_SPEEDUP:.2f})")
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        return AmpChoice(torch.bfloat16, f"bf16: {verdict}")
    return AmpChoice(None, f"fp32: {verdict}")


def measure_train_rates(model: nn.Module, dtypes: tuple[torch.dtype | None, ...], batch_size: int = PROBE_BATCH,
                        steps: int = PROBE_STEPS, rounds: int = PROBE_ROUNDS,
                        channels_last: bool = True) -> list[float]:
    """Training images/s of `model` (a copy, on the CPU) in each autocast dtype, interleaved
    round-robin so a busy machine slows them alike; medians over `rounds` after a warm-up."""
    model = copy.deepcopy(model).cpu().train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, 48, 48, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch_size,), generator=gen)

    def run(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * batch_size / (time.perf_counter() - start)

    for dtype in dtypes:  # warm-up: oneDNN builds its kernels on the first call
        run(dtype)
    rates: list[list[float]] = [[] for _ in dtypes]
    for _ in range(rounds):
        for i, dtype in enumerate(dtypes):
            rates[i].append(run(dtype))
    return [float(np.median(r)) for r in rates]


_AUTO_AMP: dict[str, AmpChoice] = {}  # one decision per process and device type


def resolve_amp(amp: str, device: torch.device, probe: nn.Module | None = None) -> AmpChoice:
    """The dtype `train.amp` means on `device`. 'auto': bf16 on CUDA; on a CPU see
    `choose_cpu_amp` (measured on `probe`, else on a default cnn_small), decided once per process."""
    if amp == "off":
        return AmpChoice(None, "fp32: train.amp is off")
    if amp in ("bf16", "fp16"):
        return AmpChoice(torch.bfloat16 if amp == "bf16" else torch.float16, f"{amp}: set by train.amp")
    if device.type == "cuda":
        return AmpChoice(torch.bfloat16, "bf16: CUDA")
    if device.type not in _AUTO_AMP:
        if probe is None:
            probe = create_model("cnn_small")

        def measure() -> tuple[float, float]:
            fp32, bf16 = measure_train_rates(probe, (None, torch.bfloat16))
            return fp32, bf16

        _AUTO_AMP[device.type] = choose_cpu_amp(cpu_flags(), cpu_has_bf16(), measure)
    return _AUTO_AMP[device.type]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `train.amp` on `device` (None: fp32); see `resolve_amp`."""
    return resolve_amp(amp, device).dtype


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 at all on this CPU (natively or by conversion on AVX-512)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ModelEma:
    """Exponential moving average of weights (evaluated and saved instead of the raw model).

    With the usual warm-up (TensorFlow's `num_updates`): after t updates the decay is
    min(decay, (1 + t) / (10 + t)), so the average spans about the last tenth of a short run
    (the demo set, a 5-epoch tuning trial) instead of staying near the random initial
    weights or averaging the whole trajectory; 0.999 is reached after about 9,000 steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0  # restored from the checkpoint on --resume
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # BatchNorm statistics are averaged with the weights (as in timm's ModelEmaV2):
        # copying the live model's statistics onto averaged weights mismatches them.
        self.updates += 1
        keep = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        ema_state, live_state = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema_state.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema_state[k] for k in floats], [live_state[k] for k in floats], 1.0 - keep)
        for k, v in ema_state.items():
            if not v.is_floating_point():
                v.copy_(live_state[k])


def build_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: decaying them only hurts small CNNs.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int):
    """Per-step schedule with linear warm-up: cosine to zero, one-cycle, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(warmup / total, 0.01))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (rare Disgust counts more)."""
    counts = torch.bincount(y, minlength=num_classes).float().clamp(min=1)
    w = counts.sum() / counts
    return w / w.mean()


def batch_pixels(data: SplitTensors, idx: torch.Tensor, aug: AugmentParams,
                 generator: torch.Generator) -> torch.Tensor:
    """The uint8 pixels of images `idx`: each is the app's crop of the face with probability
    `augment.app_view` (when `data` has them), else the dataset's. Draws no random number when
    off, so turning it on leaves the other augmentations' draws for a seed unchanged."""
    pixels = data.x[idx]
    if data.app_x is None or aug.app_view <= 0:
        return pixels
    pick = (torch.rand(len(idx), generator=generator) < aug.app_view).to(pixels.device)
    return torch.where(pick[:, None, None, None], data.app_x[idx], pixels)


def images_per_epoch(n_train: int, cfg: TrainParams) -> int:
    """How many of the n_train images one epoch trains on: all, or train.max_train_images (a new
    random subset each epoch) when that is smaller. The epoch, the schedule and the lines users
    read all take it from here."""
    return n_train if cfg.max_train_images <= 0 else min(n_train, cfg.max_train_images)


def describe_train_set(n_train: int, cfg: TrainParams) -> str:
    """'140 train', or 'a random 100 of 140 train images each epoch: train.max_train_images' when
    the cap is in effect: the count an epoch really uses, for the lines train and tune print."""
    n = images_per_epoch(n_train, cfg)
    return f"{n_train:,} train" if n == n_train else \
        f"a random {n:,} of {n_train:,} train images each epoch: train.max_train_images"


def train_one_epoch(
    model: nn.Module,
    data: SplitTensors,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: TrainParams,
    aug: AugmentParams,
    pre: PreprocessConfig,
    generator: torch.Generator,
    loss_weight: torch.Tensor | None = None,
    ema: ModelEma | None = None,
    desc: str = "train",
    soft: SoftTargets | None = None,
) -> dict[str, float]:
    """One pass over `data` in a seeded random order; returns loss, accuracy and images/s.

    With `soft`, the loss is (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T),
    the teacher's view matching the flip the augmentation gave each image (Hinton et al. 2015:
    T^2 keeps the soft gradients' scale independent of T)."""
    model.train()
    device = data.x.device
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    n = images_per_epoch(len(data), cfg)
    order = torch.randperm(len(data), generator=generator)[:n].to(device)
    steps = math.ceil(n / cfg.batch_size)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, leave=False, unit="batch",
               disable=not sys.stdout.isatty() or progress.is_quiet())
    for step in bar:
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x, flipped = augment_batch_flips(normalize(batch_pixels(data, idx, aug, generator), pre), aug, generator,
                                         value_range(pre))
        x = x.contiguous(memory_format=memory_format)
        y = data.y[idx]
        mix = cfg.mixup > 0 and torch.rand((), generator=generator).item() < cfg.mixup
        if mix:
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (), generator=generator))).beta(
                MIXUP_ALPHA, MIXUP_ALPHA))
            perm = torch.randperm(len(idx), generator=generator).to(device)
            x = lam * x + (1 - lam) * x[perm]
        target = soft.probs[flipped.long(), idx] if soft is not None else None
        if target is not None and mix:  # mixed images learn the same mix of teacher outputs
            target = lam * target + (1 - lam) * target[perm]
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, weight=loss_weight, label_smoothing=cfg.label_smoothing)
        if mix:
            loss = lam * loss + (1 - lam) * F.cross_entropy(
                logits, y[perm], weight=loss_weight, label_smoothing=cfg.label_smoothing)
        if target is not None:
            kl = F.kl_div(F.log_softmax(logits / soft.temperature, 1), target, reduction="batchmean")
            loss = (1 - soft.alpha) * loss + soft.alpha * soft.temperature ** 2 * kl
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        total_loss += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        if bar.disable is False and step % 20 == 0:
            seen = min(n, (step + 1) * cfg.batch_size)
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}")
    elapsed = time.perf_counter() - started
    return {"train_loss": total_loss.item() / n, "train_acc": correct.item() / n,
            "images_per_s": n / elapsed, "epoch_s": elapsed}


def evaluate(model: nn.Module, data: SplitTensors, pre: PreprocessConfig,
             batch_size: int | None = None) -> dict[str, float]:
    """Validation metrics of a split, through the one prediction path (`scoring`): the same
    numbers the evaluate stage and the promotion gate compute for the saved model."""
    stats = scoring.score(model, data.x, data.y, pre, batch_size)
    return {"val_loss": stats["loss"], "val_acc": stats["acc"], "val_acc_tta": stats["acc_tta"]}


# ---------------------------------------------------------------- checkpoints


def model_spec(params: Params, classes: list[str], dataset: str | None = None) -> ModelSpec:
    """The artifact spec this run's params describe (before any weights exist)."""
    return ModelSpec(arch=params.model.name, arch_kwargs=params.model.kwargs(), classes=tuple(classes),
                     preprocess=preprocess_config(params), dataset=dataset)


# ---------------------------------------------------------------- fit


@dataclass
class FitState:
    """What `--resume` needs beyond the weights: where we are and what we have seen."""

    epoch: int = 0  # epochs completed
    best_val_acc: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def fit(
    params: Params,
    train: SplitTensors,
    val: SplitTensors,
    classes: list[str],
    out_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    dataset: str | None = None,
    soft: SoftTargets | None = None,
    init: dict[str, torch.Tensor] | None = None,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train with early stopping on val accuracy (distilling `soft` teacher targets when given).

    Writes `out_dir/last.pt` every epoch and `out_dir/best.pt` on improvement (when
    out_dir is given). `init` is a state dict training starts from instead of random weights
    (a resumed run takes its own from last.pt); `inputs` (`input_digests`) are saved beside the
    params in every checkpoint. `on_epoch(epoch, metrics)` sees each epoch's metrics and may
    return True to stop (Optuna pruning); `dataset` is recorded in the checkpoints. Returns a
    summary dict.
    """
    cfg, device = params.train, train.x.device
    pre = preprocess_config(params)
    seed_everything(params.base.seed)
    arch_kwargs = params.model.kwargs()
    model = create_model(params.model.name, num_classes=len(classes), **arch_kwargs).to(device)
    if init is not None and not resume:
        model.load_state_dict(init)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, math.ceil(images_per_epoch(len(train), cfg) / cfg.batch_size))
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(params.base.seed)
    loss_weight = class_weights(train.y, len(classes)) if cfg.class_weighted else None
    state = FitState()
    last_path = out_dir / "last.pt" if out_dir else None
    spec = model_spec(params, classes, dataset)
    if resume and last_path is not None and last_path.is_file():
        ckpt = artifact.read_checkpoint(last_path, device)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema_state_dict") is not None:
            ema.module.load_state_dict(ckpt["ema_state_dict"])
            ema.updates = ckpt.get("ema_updates", 0)
        generator.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        state = FitState(**ckpt["fit_state"])
        print(f"resuming from {last_path} after epoch {state.epoch}")
    runner = torch.compile(model) if cfg.compile else model
    amp = resolve_amp(cfg.amp, device, probe=model)
    print(f"mixed precision: {amp.reason}", flush=True)

    def save(path: Path, kind: str, metrics: dict[str, float], **resume_state: Any) -> None:
        # best.pt and the registered model hold the EMA average (what was scored); last.pt
        # holds the live weights --resume continues from, the average beside them.
        weights = "live" if resume_state or ema is None else "ema"
        state_dict = model.state_dict() if weights == "live" else ema.module.state_dict()
        artifact.save_checkpoint(path, spec.replace(metrics=metrics, epoch=state.epoch, weights=weights),
                                 state_dict, kind=kind, params={**params.flat(), **(inputs or {})}, **resume_state)

    # evaluate.batch_size on a GPU; on the CPU the cache-sized scoring.CPU_BATCH (same probabilities)
    val_batch = scoring.batch_size_for(device, gpu_batch=params.evaluate.batch_size)
    stopped = "epochs"
    while state.epoch < cfg.epochs:
        epoch = state.epoch + 1
        stats = train_one_epoch(runner, train, optimizer, scheduler, cfg, params.augment, pre,
                                generator, loss_weight, ema, desc=f"epoch {epoch}/{cfg.epochs}", soft=soft)
        if not math.isfinite(stats["train_loss"]):  # nothing of this epoch is saved
            raise TrainingDiverged(f"the training loss became {stats['train_loss']} in epoch {epoch} "
                                   f"(train.lr {cfg.lr:g}, amp {amp.name}); lower train.lr")
        val_stats = evaluate(ema.module if ema is not None else model, val, pre, val_batch)
        metrics = {**stats, **val_stats, "lr": optimizer.param_groups[0]["lr"]}
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        improved = metrics["val_acc"] > state.best_val_acc + cfg.min_delta
        if improved:
            state.best_val_acc, state.best_epoch, state.since_best = metrics["val_acc"], epoch, 0
        else:
            state.since_best += 1
        progress.info(f"epoch {epoch:>3}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
                      f"train_acc {metrics['train_acc']:.4f}  val_loss {metrics['val_loss']:.4f}  "
                      f"val_acc {metrics['val_acc']:.4f}{' *' if improved else '  '}  "
                      f"{metrics['images_per_s']:.0f} img/s  {metrics['epoch_s']:.1f}s")
        if out_dir is not None:
            if improved:
                save(out_dir / "best.pt", "best", metrics)
            save(last_path, "last", metrics,
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 ema_state_dict=ema.module.state_dict() if ema is not None else None,
                 ema_updates=ema.updates if ema is not None else 0,
                 rng={"generator": generator.get_state(), "torch": torch.get_rng_state()},
                 fit_state=vars(state))
        if on_epoch is not None and on_epoch(epoch, metrics):
            stopped = "pruned"
            break
        if cfg.patience and state.since_best >= cfg.patience:
            stopped = "early_stopping"
            print(f"early stopping: no val_acc gain > {cfg.min_delta} for {cfg.patience} epochs")
            break
    return {"best_val_acc": state.best_val_acc, "best_epoch": state.best_epoch,
            "epochs_run": state.epoch, "stopped": stopped, "history": state.history, "amp": amp,
            "model": ema.module if ema is not None else model}

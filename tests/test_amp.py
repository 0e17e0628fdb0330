"""`train.amp: auto` on a CPU is decided by fact: native bf16 flags, else a measurement."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from emovision.models import create_model
from emovision.training import (AmpChoice, choose_cpu_amp, cpu_flags, measure_train_rates,
                                resolve_amp)
from tests.conftest import REPO

# This project's machine (native bf16) and the machine (AVX-512 without bf16).
NATIVE = {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
AVX512_ONLY = {"fpu", "avx2", "avx512f", "avx512bw", "avx512_vnni"}


def not_called() -> tuple[float, float]:
    raise AssertionError("a native-bf16 or bf16-less CPU needs no measurement")


def test_native_bf16_is_used_without_measuring():
    choice = choose_cpu_amp(NATIVE, bf16_supported=True, measure=not_called)
    assert choice.dtype == torch.bfloat16 and choice.name == "bf16"
    assert "native bf16" in choice.reason and "avx512_bf16" in choice.reason
    assert choose_cpu_amp({"amx_bf16"}, True, not_called).name == "bf16"


def test_avx512_without_native_bf16_follows_the_measurement():
    # the figures: 138 img/s fp32 vs 53 img/s bf16 -> fp32, saying so
    slow = choose_cpu_amp(AVX512_ONLY, bf16_supported=True, measure=lambda: (138.0, 53.0))
    assert slow.dtype is None and slow.name == "fp32"
    assert slow.reason.startswith("fp32: no native bf16") and "53 img/s in bf16 vs 138 in fp32" in slow.reason
    fast = choose_cpu_amp(AVX512_ONLY, bf16_supported=True, measure=lambda: (100.0, 150.0))
    assert fast.name == "bf16" and "x1.50" in fast.reason
    # within noise (less than 5% faster) stays fp32
    assert choose_cpu_amp(AVX512_ONLY, True, lambda: (100.0, 103.0)).name == "fp32"


def test_cpu_without_bf16_is_fp32_without_measuring():
    choice = choose_cpu_amp({"avx2"}, bf16_supported=False, measure=not_called)
    assert choice == AmpChoice(None, choice.reason) and choice.name == "fp32"


def test_native_flags_without_onednn_bf16_are_fp32():
    # ONEDNN_MAX_CPU_ISA=AVX2 on this machine: avx512_bf16 still listed, oneDNN's bf16 off,
    # and autocast bf16 trained 8x slower (71 vs 581 img/s)
    choice = choose_cpu_amp(NATIVE, bf16_supported=False, measure=not_called)
    assert choice.name == "fp32" and "cannot run bf16" in choice.reason


def test_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_explicit_settings_and_this_machine():
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu).dtype is None
    assert resolve_amp("bf16", cpu).dtype == torch.bfloat16
    assert resolve_amp("fp16", cpu).dtype == torch.float16
    auto = resolve_amp("auto", cpu)
    native = {"avx512_bf16", "amx_bf16"} & cpu_flags()
    assert (auto.name == "bf16") if native else auto.reason.startswith(("fp32", "bf16: no native"))
    assert resolve_amp("auto", cpu) is auto  # decided once per process


@pytest.mark.parametrize("dtypes", [(None, torch.bfloat16)])
def test_measure_train_rates_times_each_precision(dtypes):
    model = create_model("cnn_small", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rates = measure_train_rates(model, dtypes, batch_size=8, steps=1, rounds=2)
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # measured on a copy


BENCH_UNDER_AVX2 = """
import json, torch
from emovision.config import Params
from stages.bench import train_throughput
p = Params().replace(**{"model.width": 8, "train.batch_size": 8, "bench.train_batches": 1, "bench.repeats": 1})
print(json.dumps(train_throughput(p, torch.device("cpu"), lambda: None)))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's ISA cap is x86's")
def test_a_cpu_without_onednn_bf16_trains_and_benches_in_fp32_only():
    """oneDNN capped at AVX2 (an AVX2 laptop's oneDNN; /proc/cpuinfo here may still list
    avx512_bf16): auto picks fp32, and bench times no bf16 it could never pick."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", BENCH_UNDER_AVX2], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    train = json.loads(out.splitlines()[-1])
    assert train["amp_auto"] == "fp32" and "cannot run bf16" in train["amp_auto_reason"]
    assert train["images_per_s_bf16"] is None and train["images_per_s_fp32"] > 0
    assert train["amp_auto_vs_fastest"] == 1.0

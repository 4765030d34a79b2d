"""One rule decides whether this CPU computes bf16 natively: for training, evaluation and
the Bento alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components import hardware

# What /proc/cpuinfo lists on an AVX-512 CPU without bf16 instructions (Skylake-SP), where
# oneDNN emulates bf16, and on one with them (Sapphire Rapids).
AVX512_ONLY = "flags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
AVX512_BF16 = AVX512_ONLY.rstrip("\n") + " avx512_bf16\n"
AMX = "flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile amx_int8\n"


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return path


def test_native_bf16_means_the_bf16_instructions_not_avx512_alone(tmp_path: Path) -> None:
    assert hardware.cpu_has_native_bf16(cpuinfo(tmp_path, AVX512_ONLY)) is False
    assert hardware.cpu_has_native_bf16(cpuinfo(tmp_path, AVX512_BF16)) is True
    assert hardware.cpu_has_native_bf16(cpuinfo(tmp_path, AMX)) is True
    assert hardware.cpu_has_native_bf16(tmp_path / "missing") is False


def test_training_picks_fp32_without_timing_on_a_cpu_that_emulates_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.training import runtime

    def no_timing() -> float:
        raise AssertionError("bf16 was timed on a CPU without bf16 instructions")

    monkeypatch.setattr(runtime, "bf16_speedup_on_cpu", no_timing)
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo(tmp_path, AVX512_ONLY))
    assert runtime.choose_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo(tmp_path, AMX))
    assert runtime.choose_precision("auto", torch.device("cpu"), measure=False) == "bf16"


def test_evaluation_and_the_bento_decide_bf16_alike(
    tiny_classifiers: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate scores at the precision the Bento serves: both fall back to fp32 on a CPU
    that would emulate bf16, and both use bf16 where the CPU has it."""
    from components.evaluate import TextClassifier
    from serving.predict import load_classifier

    model_dir = tiny_classifiers["good"]
    for flags, expected in ((AVX512_ONLY, "fp32"), (AVX512_BF16, "bf16")):
        monkeypatch.setattr(hardware, "CPUINFO", cpuinfo(tmp_path, flags))
        evaluated = TextClassifier.load(model_dir, precision="bf16")
        served = load_classifier(model_dir, precision="bf16")
        assert (evaluated.precision, served.precision) == (expected, expected), flags

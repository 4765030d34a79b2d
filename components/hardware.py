"""What this machine's processor can do, decided by one rule for training and serving.

Imports nothing from Ratchet and nothing heavy, so the Bento ships it alone.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Instructions that compute in bf16 natively. Without them oneDNN emulates bf16 with
# AVX-512 or AVX2 and is many times slower than fp32, so bf16 would cost speed for nothing.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path | None = None) -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16).

    Args:
        cpuinfo: the file listing the CPU's flags (default ``/proc/cpuinfo``); a
            machine without one (not Linux) counts as having none.
    """
    try:
        flags = (cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)

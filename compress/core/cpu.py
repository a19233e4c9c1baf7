"""What this CPU can run natively, read from ``/proc/cpuinfo`` flags.

Kernels and precisions are chosen from these facts (bf16 training and inference, VNNI integer
kernels, 7-bit weights without VNNI), and every measured figure names them.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
X86_MACHINES = ("x86_64", "amd64", "x86", "i386", "i686")  # ``platform.machine()``, lower-cased
#: Flags that change which kernels and precisions pay off, in the order they are reported.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name and feature flags.

    Attributes:
        model_name: ``model name`` from ``/proc/cpuinfo`` (or the platform's processor string).
        flags: every flag of the first processor entry.
        x86: whether the flags come from an x86 CPU (others have no such flags).
    """

    model_name: str
    flags: frozenset[str]
    x86: bool = True

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix instructions (AMX-BF16 or AVX512-BF16): bf16 autocast runs faster than FP32."""
        return "amx_bf16" in self.flags or "avx512_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        """8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8); non-x86 counts as yes."""
        return not self.x86 or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def channels_last(self) -> bool:
        """Whether oneDNN's channels_last convolutions pay here: with AVX-512 (FP32 training steps 1.21x
        faster than NCHW on an AVX512-VNNI Xeon), not on an AVX2-only x86 CPU (NCHW's median step faster in
        6 of 6 rounds on session 41's EPYC, 3.03 against 3.35 s); non-x86 hosts keep it."""
        return not self.x86 or "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags or "amx_int8" in self.flags

    def features(self) -> tuple[str, ...]:
        """The reported flags this CPU has, in :data:`REPORTED_FLAGS` order."""
        return tuple(f for f in REPORTED_FLAGS if f in self.flags)

    def describe(self) -> str:
        """One line for reports: model name and the relevant features."""
        feats = " ".join(self.features()) or (("no AVX2" if self.flags else "flags unknown") if self.x86
                                              else platform.machine())
        return f"{self.model_name} ({feats})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse the text of ``/proc/cpuinfo``; only the first processor entry is read."""
    model, flags = "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    x86 = bool(flags & {"sse2", "avx", "avx2", "lm"})
    return CpuInfo(model_name=model, flags=flags, x86=x86)


@functools.cache
def host_cpu() -> CpuInfo:
    """This host's CPU (cached); without ``/proc/cpuinfo`` the platform's processor name and no flags."""
    try:
        info = parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        info = CpuInfo(model_name=platform.processor() or platform.machine(), flags=frozenset(), x86=False)
    if not info.flags and platform.machine().lower() in X86_MACHINES:  # an x86 host whose flags cannot be
        info = dataclasses.replace(info, x86=True)  # read counts as one without VNNI or bf16 (the safe side)
    return info

import pytest

from compress.core import cpu
from compress.core.cpu import CpuInfo, parse_cpuinfo

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 lm
processor\t: 1
model name\t: second entry ignored
flags\t\t: fpu
"""
EPYC_AVX2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma lm\n"
EPYC_BF16 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 lm\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


def test_amx_xeon():
    cpu = parse_cpuinfo(XEON_AMX)
    assert cpu.model_name == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu.native_bf16 and cpu.vnni and cpu.amx
    assert cpu.features() == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    assert cpu.describe().endswith("(avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8)")


def test_avx2_only_epyc_has_neither_bf16_nor_vnni():
    cpu = parse_cpuinfo(EPYC_AVX2)
    assert not cpu.native_bf16 and not cpu.vnni and not cpu.amx
    assert cpu.features() == ("avx2",)


def test_avx512_bf16_without_amx_counts_as_native_bf16():
    cpu = parse_cpuinfo(EPYC_BF16)
    assert cpu.native_bf16 and cpu.vnni and not cpu.amx


def test_non_x86_counts_as_vnni_but_not_bf16():
    cpu = parse_cpuinfo(ARM)
    assert not cpu.x86 and cpu.vnni and not cpu.native_bf16
    assert cpu.model_name == "unknown CPU"


def test_record_is_frozen():
    cpu = CpuInfo("x", frozenset())
    try:
        cpu.model_name = "y"  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("CpuInfo must be frozen")


@pytest.mark.parametrize(("machine", "x86"), [("x86_64", True), ("AMD64", True), ("arm64", False)])
def test_unreadable_cpuinfo_counts_an_x86_host_as_one_without_vnni_or_bf16(monkeypatch, tmp_path, machine, x86):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu.platform, "processor", lambda: "")
    info = cpu.host_cpu.__wrapped__()  # host_cpu itself is cached for the session
    assert (info.x86, info.vnni, info.native_bf16) == (x86, not x86, False)
    assert info.describe() == (f"{machine} (flags unknown)" if x86 else f"{machine} ({machine})")


def test_a_readable_cpuinfo_without_flags_on_an_x86_machine_counts_as_x86(monkeypatch, tmp_path):
    (tmp_path / "cpuinfo").write_text("processor : 0\nmodel name : Some vCPU\n")
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    info = cpu.host_cpu.__wrapped__()
    assert (info.model_name, info.x86, info.vnni) == ("Some vCPU", True, False)


@pytest.mark.parametrize(("text", "channels_last"), [(XEON_AMX, True), (EPYC_BF16, True), (EPYC_AVX2, False),
                                                     (ARM, True)])
def test_channels_last_is_chosen_where_avx512_convolutions_run_it_fastest(text, channels_last):
    assert parse_cpuinfo(text).channels_last is channels_last

"""The hardware probe: CPU flags from CPUID (numpy's dispatch table), /proc/cpuinfo only where it agrees,
the CPU kind int8 depends on, and the machine description benchmarks are labelled with."""

from __future__ import annotations

import pytest

from stadapter_deploy import hardware


def test_flags_agree_with_the_cpuid_this_process_sees():
    cpuid = hardware.cpuid_flags()
    assert cpuid, "numpy's CPU dispatch table is missing"
    flags = hardware.cpu_flags()
    assert all((name in flags) == present for name, present in cpuid.items())  # under qemu too
    assert hardware.cpu_kind() in (*hardware.INT8_DOT_KINDS, "avx512", "avx2", "x86_64") or not hardware.cpu_is_x86()


def test_cpuinfo_adds_flags_only_when_it_describes_this_cpu():
    cpuid = {"avx2": True, "avx512f": False, "avx512_vnni": False}
    host = frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8"})  # what an emulated CPU's cpuinfo shows
    assert hardware.merge_flags(cpuid, host) == {"avx2"}
    same = frozenset({"avx2", "avx_vnni", "sse4_2"})
    assert hardware.merge_flags(cpuid, same) == same  # agrees: its AVX-VNNI (which numpy does not list) counts
    assert hardware.merge_flags(None, same) == same and hardware.merge_flags(cpuid, None) == {"avx2"}


@pytest.mark.parametrize(
    "flags, machine, kind, int8_dot",
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"}, "x86_64", "amx", True),
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", "avx512_vnni", True),
        ({"avx2", "avx_vnni"}, "x86_64", "avx_vnni", True),
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512", False),
        ({"avx2", "fma"}, "x86_64", "avx2", False),
        ({"sse4_2"}, "x86_64", "x86_64", False),
        ({"asimd", "asimddp"}, "aarch64", "aarch64", False),
    ],
)
def test_cpu_kind(monkeypatch, flags, machine, kind, int8_dot):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    assert hardware.cpu_kind() == kind and hardware.cpu_has_int8_dot() is int8_dot
    assert hardware.cpu_is_x86() is (machine == "x86_64")


def test_describe():
    info = hardware.describe()
    assert set(info) == {"cpu", "cpu_kind", "cpu_flags", "cores", "gpu"}
    assert info["cpu"] and 1 <= info["cores"] and info["cpu_kind"] == hardware.cpu_kind()
    assert set(info["cpu_flags"]) <= hardware.cpu_flags()

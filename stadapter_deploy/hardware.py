"""What this machine has: CPU flags and kind, cores, GPU name. The one place that asks.

CPU flags are Linux's names (avx2, avx512_vnni, amx_int8, ...). They come from the CPUID this process
sees, through numpy's runtime dispatch table, which is what ONNX Runtime's and torch's kernels
dispatch on too. /proc/cpuinfo adds what numpy does not list (AVX-VNNI, AMX), but only when it agrees
with CPUID on every flag both report: under an emulator (`qemu-x86_64 -cpu Haswell`) it describes
the host, not the CPU the process runs on.
"""

from __future__ import annotations

import functools
import os
import platform

# numpy's __cpu_features__ names -> Linux's flag names
NUMPY_FLAGS = {
    "SSSE3": "ssse3",
    "SSE41": "sse4_1",
    "SSE42": "sse4_2",
    "AVX": "avx",
    "F16C": "f16c",
    "FMA3": "fma",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw",
    "AVX512DQ": "avx512dq",
    "AVX512VL": "avx512vl",
    "AVX512IFMA": "avx512ifma",
    "AVX512VBMI": "avx512vbmi",
    "AVX512VBMI2": "avx512_vbmi2",
    "AVX512BITALG": "avx512_bitalg",
    "AVX512VPOPCNTDQ": "avx512_vpopcntdq",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "AVX512FP16": "avx512_fp16",
    "ASIMD": "asimd",
    "ASIMDDP": "asimddp",
}
INT8_DOT_KINDS = ("amx", "avx512_vnni", "avx_vnni")


def cpuid_flags() -> dict[str, bool] | None:
    """{linux flag: present} for the flags numpy's CPUID table reports; None when numpy has no table."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features  # numpy < 2
        except ImportError:
            return None
    return {linux: bool(features[name]) for name, linux in NUMPY_FLAGS.items() if name in features}


def cpuinfo_flags() -> frozenset[str] | None:
    """The flags line of /proc/cpuinfo ("Features" on ARM); None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), None)
    except OSError:
        return None
    return None if line is None else frozenset(line.partition(":")[2].split())


def merge_flags(cpuid: dict[str, bool] | None, cpuinfo: frozenset[str] | None) -> frozenset[str]:
    """CPUID's flags, plus cpuinfo's others when cpuinfo agrees with CPUID on every flag both report."""
    if cpuid is None:
        return cpuinfo or frozenset()
    from_cpuid = frozenset(name for name, present in cpuid.items() if present)
    if cpuinfo is not None and all((name in cpuinfo) == present for name, present in cpuid.items()):
        return from_cpuid | cpuinfo
    return from_cpuid


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, as Linux names them (avx2, avx512_vnni, avx512_bf16, amx_int8, ...)."""
    return merge_flags(cpuid_flags(), cpuinfo_flags())


def cpu_kind() -> str:
    """The CPU's kind as int8 GEMMs see it.

    "amx", "avx512_vnni", "avx_vnni": u8 x s8 dot products summed exactly in int32; "avx512", "avx2",
    "x86_64": u8 x s8 pairs summed in a saturating int16 (VPMADDUBSW); else the machine's name.
    """
    flags = cpu_flags()
    for kind, flag in (("amx", "amx_int8"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni")):
        if flag in flags:
            return kind
    for kind in ("avx512bw", "avx2"):
        if kind in flags:
            return kind.removesuffix("bw")
    machine = platform.machine().lower()
    return "x86_64" if machine in ("x86_64", "amd64") else machine


def cpu_has_int8_dot() -> bool:
    """VNNI (AVX-512 or AVX) or AMX: int8 dot products in hardware, exact for any int8 weights."""
    return cpu_kind() in INT8_DOT_KINDS


def cpu_is_x86() -> bool:
    return cpu_kind() in (*INT8_DOT_KINDS, "avx512", "avx2", "x86_64")


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def simd_flags() -> list[str]:
    """The flags a CPU figure depends on (avx*, amx*, fma), for labelling benchmark numbers."""
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_bytes() -> int:
    """This machine's memory (or the cgroup's limit, where one is lower), in bytes."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def nvidia_gpu_count() -> int:
    """NVIDIA GPUs this process may use (without importing torch): CUDA_VISIBLE_DEVICES where set, else the
    driver's GPU list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 1 if os.path.exists("/dev/nvidia0") else 0


def nvidia_gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU to its kernel (without importing torch): its device files."""
    return os.path.exists("/proc/driver/nvidia/gpus") or os.path.exists("/dev/nvidia0")


def gpu_name() -> str | None:
    """The current CUDA GPU's name as torch sees it (the one an engine would run on); None without one."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def describe() -> dict:
    """Everything above in one dict: what benchmark figures are labelled with."""
    return {
        "cpu": cpu_name(),
        "cpu_kind": cpu_kind(),
        "cpu_flags": simd_flags(),
        "cores": cpu_cores(),
        "gpu": gpu_name(),
    }

"""What the measurements were taken on: library versions and the CPU."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from optimize.manifest import HostInfo, LibraryVersions


def package_version(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> LibraryVersions:
    return LibraryVersions(
        python=platform.python_version(),
        torch=package_version("torch") or "missing",
        onnx=package_version("onnx") or "missing",
        onnxruntime=package_version("onnxruntime") or "missing",
        numpy=package_version("numpy") or "missing",
        onnxscript=package_version("onnxscript"),
    )


def cpu_model(proc_cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """/proc/cpuinfo is read directly (py-cpuinfo takes a second or more to probe)."""
    try:
        for line in proc_cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import cpuinfo

        return str(cpuinfo.get_cpu_info().get("brand_raw") or platform.processor() or "unknown")
    except Exception:
        return platform.processor() or "unknown"


def host_info() -> HostInfo:
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = cores
    return HostInfo(
        cpu_model=cpu_model(),
        cores=cores,
        usable_cores=usable,
        platform=platform.platform(),
    )


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(proc_cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        for line in proc_cpuinfo.read_text().splitlines():
            if line.lower().startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_vnni(proc_cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """VNNI multiplies u8 by s8 and accumulates in int32; without it ORT's 8-bit kernels
    sum pairs in int16 (vpmaddubsw) and saturate unless weights use 7 bits."""
    return bool(cpu_flags(proc_cpuinfo) & VNNI_FLAGS)

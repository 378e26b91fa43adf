"""The hardware and numerics a run trained on: what decides which kernels TensorFlow, oneDNN and the BLAS run.

Two machines with the same fingerprint run the same kernels in the same order;
two with different ones may round differently, so their weights can differ in
the last bits (README, Reproducibility). pipeline.lineage stores the
fingerprint with every run as one JSON artifact, and `mlp reproduce` compares
the recorded one with the reproduction's, field by field.

TensorFlow is imported by the three functions that ask it (threads, oneDNN,
build), not at the top: the evaluate stage and `mlp reproduce` load this
module through pipeline.lineage and would otherwise start TensorFlow (about
2 s) only to compare or digest a recorded fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

# scikit-learn's dependency: which BLAS kernels NumPy's library chose at run time.
from threadpoolctl import threadpool_info

try:  # NumPy's runtime CPUID probe: private, so its absence only empties one field
    from numpy._core._multiarray_umath import __cpu_features__
except ImportError:
    __cpu_features__ = {}

# The instruction-set extensions that change which kernels run (as /proc/cpuinfo names them).
KERNEL_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)
# The same, as NumPy's CPUID probe names them.
CPUID_FEATURES = (
    "SSE41",
    "SSE42",
    "AVX",
    "F16C",
    "FMA3",
    "AVX2",
    "AVX512F",
    "AVX512CD",
    "AVX512BW",
    "AVX512DQ",
    "AVX512VL",
    "AVX512VNNI",
    "AVX512BF16",
    "AVX512FP16",
)
# Environment variables that change kernels, thread pools or compilation.
NUMERICS_VARIABLES = (
    "TF_ENABLE_ONEDNN_OPTS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "XLA_FLAGS",
    "TF_XLA_FLAGS",
    "TF_DETERMINISTIC_OPS",
)
CPUINFO = Path("/proc/cpuinfo")
CACHE_DIRECTORY = Path("/sys/devices/system/cpu/cpu0/cache")


def fingerprint() -> dict[str, Any]:
    """Everything below, in one JSON-ready record."""
    return {
        "cpu": cpu(),
        "threads": threads(),
        "onednn": onednn(),
        "tensorflow": tensorflow_build(),
        "blas": blas(),
        "environment": {name: os.environ[name] for name in NUMERICS_VARIABLES if name in os.environ},
    }


def cpu() -> dict[str, Any]:
    """Vendor, family/model/stepping, kernel-relevant extensions, caches and cores."""
    info = _first_processor()
    flags = set(info.get("flags", "").split())
    return {
        "vendor": info.get("vendor_id", platform.processor() or "unknown"),
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "stepping": info.get("stepping"),
        "model_name": info.get("model name", platform.processor() or "unknown"),
        "machine": platform.machine(),
        # What the kernel reports, and what CPUID tells this process: the two
        # differ under emulation or when a hypervisor hides features, and the
        # libraries pick their kernels by the second.
        "isa": [flag for flag in KERNEL_FLAGS if flag in flags],
        "isa_cpuid": _cpuid_features(),
        "caches": caches(),
        "logical_cores": os.cpu_count(),
        "schedulable_cores": schedulable_cores(),
    }


def caches() -> dict[str, str]:
    """Cache sizes by level and type, e.g. {"L1d": "32K", "L2": "1024K"}; {} where sysfs does not say."""
    sizes = {}
    for index in sorted(CACHE_DIRECTORY.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[f"L{level}{suffix}"] = size
    return sizes


def schedulable_cores() -> int:
    # TensorFlow sizes its thread pools by the cores this process may run on, not by all of them.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads() -> dict[str, int]:
    """TensorFlow's thread pool sizes in force: set in code, else by environment, else one per schedulable core."""
    import tensorflow as tf

    cores = schedulable_cores()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {
        "intra_op": intra or int(os.environ.get("TF_NUM_INTRAOP_THREADS") or cores),
        "inter_op": inter or int(os.environ.get("TF_NUM_INTEROP_THREADS") or cores),
    }


def onednn() -> dict[str, Any]:
    """Whether TensorFlow's oneDNN operations are on, and why: the variable, or TensorFlow's default for this CPU."""
    # Private, but the only place TensorFlow says whether its oneDNN operations are on.
    from tensorflow.python.util import _pywrap_util_port

    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    enabled = bool(_pywrap_util_port.IsMklEnabled())
    return {
        "enabled": enabled,
        "decided_by": "TF_ENABLE_ONEDNN_OPTS" if setting is not None else "TensorFlow's default for this CPU",
        "max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all",
    }


def tensorflow_build() -> dict[str, Any]:
    import tensorflow as tf

    return {
        "version": tf.version.VERSION,
        "git_version": tf.version.GIT_VERSION,
        "compiler": tf.version.COMPILER_VERSION,
        "build_info": {key: _plain(value) for key, value in tf.sysconfig.get_build_info().items()},
    }


def blas() -> dict[str, Any]:
    """The BLAS NumPy uses: its name and version and, at run time, the kernel family it chose and its threads."""
    built = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    record: dict[str, Any] = {"name": built.get("name"), "version": built.get("version")}
    # NumPy's own copy only: which other libraries are loaded (SciPy's BLAS, OpenMP
    # runtimes) depends on what the process imported, not on the machine.
    for library in threadpool_info():
        if Path(library.get("filepath", "")).parent.name in ("numpy", "numpy.libs"):
            record.update({key: library.get(key) for key in ("internal_api", "architecture", "num_threads")})
    return record


def digest(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON: equal records, equal digests."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def isa_summary(record: dict[str, Any]) -> str:
    """The kernel-relevant extensions in one short string, e.g. `avx,avx2,avx512f,fma,sse4_2`."""
    return ",".join(record.get("cpu", {}).get("isa", [])) or "unknown"


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per field that differs: `threads.intra_op 2 -> 1`, `cpu.isa -avx512f +amx_tile`."""
    before, after = _flatten(recorded), _flatten(current)
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            removed = [f"-{item}" for item in old if item not in new]
            added = [f"+{item}" for item in new if item not in old]
            lines.append(f"{key} {' '.join(removed + added) or '(order)'}")
        else:
            lines.append(f"{key} {_show(old)} -> {_show(new)}")
    return lines


def _first_processor() -> dict[str, str]:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def _cpuid_features() -> list[str]:
    return [name for name in CPUID_FEATURES if __cpu_features__.get(name)]


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _show(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)

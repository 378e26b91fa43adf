"""A run's hardware and numerics fingerprint: what decides which kernels TensorFlow, oneDNN and the BLAS run,
so which roundings (README, Reproducibility); with its digest and field-by-field differences for `mlp reproduce`.
Only fingerprint() imports TensorFlow: comparing or digesting a record should not start it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from pipeline.config import changed, flatten

# The instruction-set extensions that change which kernels run, as /proc/cpuinfo names them. Those
# from avx512_vnni on also turn TensorFlow's oneDNN rewrites on by default (TF_ENABLE_ONEDNN_OPTS unset).
KERNEL_FLAGS = (
    *("sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni"),
    *("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2"),
    *("avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16"),
    *("amx_tile", "amx_int8", "amx_bf16", "amx_fp16"),
)
# Environment variables that change kernels (oneDNN's among them), thread pools or compilation.
NUMERICS_VARIABLES = (
    *("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TF_DETERMINISTIC_OPS"),
    *("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"),
    *("XLA_FLAGS", "TF_XLA_FLAGS"),
)
CPUINFO = Path("/proc/cpuinfo")
CACHE_DIRECTORY = Path("/sys/devices/system/cpu/cpu0/cache")


def fingerprint() -> dict[str, Any]:
    """The CPU, TensorFlow's thread pools and build, the BLAS and the numerics variables: one JSON-ready record."""
    import tensorflow as tf

    threading, cores = tf.config.threading, schedulable_cores()
    return {
        "cpu": cpu(),
        # The pool sizes in force: set in code, else by environment, else one per schedulable core.
        "threads": {
            "intra_op": threading.get_intra_op_parallelism_threads()
            or int(os.getenv("TF_NUM_INTRAOP_THREADS") or cores),
            "inter_op": threading.get_inter_op_parallelism_threads()
            or int(os.getenv("TF_NUM_INTEROP_THREADS") or cores),
        },
        "tensorflow": {
            "version": tf.version.VERSION,
            "git_version": tf.version.GIT_VERSION,
            "compiler": tf.version.COMPILER_VERSION,
            "build_info": dict(tf.sysconfig.get_build_info()),
        },
        "blas": blas(),
        "environment": {name: os.environ[name] for name in NUMERICS_VARIABLES if name in os.environ},
    }


def cpu() -> dict[str, Any]:
    try:  # the first processor's fields
        text = CPUINFO.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
    except OSError:
        text = ""
    info = {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in text.splitlines())}
    flags = set(info.get("flags", "").split())
    return {
        "vendor": info.get("vendor_id", platform.processor() or "unknown"),
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "stepping": info.get("stepping"),
        "model_name": info.get("model name", platform.processor() or "unknown"),
        "machine": platform.machine(),
        # What the kernel reports, and what CPUID tells this process (NumPy's dispatch is chosen by it):
        # the two differ under emulation or when a hypervisor hides features.
        "isa": [flag for flag in KERNEL_FLAGS if flag in flags],
        "isa_cpuid": numpy_simd_targets(),
        "caches": caches(),
        "logical_cores": os.cpu_count(),
        "schedulable_cores": schedulable_cores(),
    }


def numpy_simd_targets() -> list[str]:
    """The SIMD targets NumPy's dispatch chose on this CPU, e.g. ["X86_V3", "baseline(X86_V2)"]."""
    chosen = np.lib.introspect.opt_func_info().values()
    return sorted({target["current"] for signatures in chosen for target in signatures.values()})


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


def blas() -> dict[str, Any]:
    """The BLAS NumPy uses: its name and version and, at run time, the kernel family it chose and its threads."""
    built = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    record: dict[str, Any] = {"name": built.get("name"), "version": built.get("version")}
    # NumPy's own copy only: which others are loaded (SciPy's BLAS, OpenMP) depends on the imports, not the machine.
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
    lines = []
    for key, change in changed(flatten(recorded), flatten(current)).items():
        old, new = change["a"], change["b"]
        if isinstance(old, list) and isinstance(new, list):
            changes = [f"-{item}" for item in old if item not in new] + [f"+{item}" for item in new if item not in old]
            lines.append(f"{key} {' '.join(changes) or '(order)'}")
        else:
            lines.append(f"{key} {_show(old)} -> {_show(new)}")
    return lines


def _show(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)

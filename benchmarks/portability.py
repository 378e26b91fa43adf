"""Which training settings give the same weights on CPUs with other instruction sets: a measurement, not a test.

    python benchmarks/portability.py                  # the matrix: every mode on every "machine"
    python benchmarks/portability.py --speed          # and the cost of each mode, natively
    python benchmarks/portability.py --cpus native,Haswell --modes host,portable --jobs 1

Each cell is one training of the tiny configuration (TINY below: 512 random
MNIST-shaped rows, 784-64-10 with dropout, one epoch, seed 42, op determinism)
by the project's own train(), in a fresh process whose environment is the
mode's. The "machines" are this CPU as it is, this CPU with oneDNN capped at
AVX2 (ONEDNN_MAX_CPU_ISA; a mode that sets the variable itself keeps its own
value), this CPU restricted to one core (taskset), and other CPU models
emulated by QEMU's user mode (`qemu-x86_64 -cpu <model>`, from the system
package qemu-user): CPUID, the instruction sets and the cache sizes are the
emulated model's, so TensorFlow, oneDNN and Eigen pick their kernels as they
would there. QEMU 7.2 emulates up to AVX2/FMA, not AVX-512; TensorFlow's wheel
needs AVX, so a CPU without it (Nehalem) cannot run it at all.

Writes reports/portability/matrix.json (and with --speed, speed.json) and
prints both as Markdown tables; with --expected, when the `portable` mode gave
one hash on every machine, reports/portability/portable_weights.json, the hash
that tests/test_portability.py checks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from pipeline.determinism import PORTABLE_ENVIRONMENT  # noqa: E402 - after the path; imports no TensorFlow

OUTPUT = REPOSITORY / "reports" / "portability"
ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
# Mode -> the environment it runs in; modes named xla_* also compile the training step with XLA.
MODES = {
    "host": {},
    "onednn_off": ONEDNN_OFF,
    "onednn_off_1_thread": {**ONEDNN_OFF, **ONE_THREAD},
    "xla_sse4_2_1_thread": {**ONEDNN_OFF, **ONE_THREAD, "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"},
    "sgemm_avx2_1_thread": {**ONEDNN_OFF, **ONE_THREAD, "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sgemm_avx_1_thread": {**ONEDNN_OFF, **ONE_THREAD, "ONEDNN_MAX_CPU_ISA": "AVX"},
    "sgemm_avx_2_threads": {**ONEDNN_OFF, "ONEDNN_MAX_CPU_ISA": "AVX", "TF_NUM_INTRAOP_THREADS": "2"},
    "sgemm_sse41_2_threads": {**ONEDNN_OFF, "ONEDNN_MAX_CPU_ISA": "SSE41", "TF_NUM_INTRAOP_THREADS": "2"},
    "portable": PORTABLE_ENVIRONMENT,
    "portable_xla": {**PORTABLE_ENVIRONMENT, "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"},
}
# Machine -> (command prefix, extra environment).
MACHINES = {
    "native": ([], {}),
    "native_onednn_avx2": ([], {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "native_1_core": (["taskset", "-c", "0"], {}),
    "Haswell": (["qemu-x86_64", "-cpu", "Haswell"], {}),
    "SandyBridge": (["qemu-x86_64", "-cpu", "SandyBridge"], {}),
    "EPYC-Rome": (["qemu-x86_64", "-cpu", "EPYC-Rome"], {}),
}
TINY = {
    "rows": 512,
    "features": 784,
    "num_classes": 10,
    "seed": 42,
    "model": {
        "hidden_units": [64],
        "activation": "relu",
        "dropout_rate": 0.45,
        "kernel_initializer": "glorot_uniform",
        "l2_weight_decay": 0.0,
    },
    "optimizer": {"name": "adam", "learning_rate": 0.001},
    "train": {"loss": "categorical_crossentropy", "batch_size": 128, "epochs": 1, "early_stopping_patience": None},
}
# A check on more arithmetic: the default network (256-256), 4,096 rows, 2 epochs (64 steps).
MEDIUM = {**TINY, "rows": 4_096, "model": {**TINY["model"], "hidden_units": [256, 256]}}
MEDIUM["train"] = {**TINY["train"], "epochs": 2}
# The speed runs: the default network on as many random rows as MNIST's training split.
SPEED = {**MEDIUM, "rows": 54_000, "train": {**TINY["train"], "epochs": 5}}
CONFIGURATIONS = {"tiny": TINY, "medium": MEDIUM, "speed": SPEED}


def train_once(configuration: dict, *, xla: bool, determinism: str) -> dict:
    """In the child process: train `configuration` with the project's train(); what came out and what was in force."""
    import keras
    import numpy as np

    from pipeline.config import ModelConfig, OptimizerConfig, TrainConfig
    from pipeline.hardware import numpy_simd_targets
    from pipeline.model import weights_sha256
    from pipeline.splits import Split
    from pipeline.train import train

    if xla:
        compile_without_xla = keras.Model.compile

        def compile_with_xla(model, *args, **kwargs):
            compile_without_xla(model, *args, **kwargs)
            # Keras turns XLA off, with only a warning, when op determinism is on: force it.
            model._jit_compile = True

        keras.Model.compile = compile_with_xla

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    epoch_seconds: list[float] = []
    generator = np.random.default_rng(0)
    rows, features = configuration["rows"], configuration["features"]
    inputs = generator.random((rows, features), dtype=np.float32)
    training = Split(inputs, generator.integers(0, configuration["num_classes"], rows))
    validation = Split(np.zeros((0, features), np.float32), np.zeros(0, np.int64))
    start = time.perf_counter()
    model, _ = train(
        training,
        validation,
        num_classes=configuration["num_classes"],
        task="multiclass",
        model_config=ModelConfig(**configuration["model"]),
        optimizer_config=OptimizerConfig(**configuration["optimizer"]),
        train_config=TrainConfig(**configuration["train"], determinism=determinism),
        seed=configuration["seed"],
        callbacks=[EpochTimer()],
    )
    return {
        "weights_sha256": weights_sha256(model),
        "seconds": round(time.perf_counter() - start, 2),
        # The first epoch also traces and compiles the training step.
        "epoch_seconds": round(statistics.median(epoch_seconds[1:] or epoch_seconds), 3),
        # The SIMD targets CPUID made NumPy choose: under QEMU, the emulated model's.
        "cpuid": numpy_simd_targets(),
        "xla": bool(model.jit_compile),
    }


def run_cell(mode: str, machine: str, configuration: str = "tiny") -> dict:
    """One training in a fresh process: `mode`'s environment on `machine`."""
    prefix, machine_environment = MACHINES[machine]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **machine_environment, **MODES[mode]}
    command = [*prefix, sys.executable, __file__, "--child", mode, "--configuration", configuration]
    start = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=REPOSITORY)
    wall = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": mode, "machine": machine, "error": f"exit {result.returncode}: {tail}", "wall_seconds": wall}
    cell = json.loads(result.stdout.strip().splitlines()[-1])
    return {"mode": mode, "machine": machine, **cell, "wall_seconds": wall}


def available_machines(names: list[str]) -> list[str]:
    usable = []
    for name in names:
        tool = (MACHINES[name][0] or [None])[0]
        if tool and not shutil.which(tool):
            print(f"skipping {name}: {tool} is not installed (apt-get install qemu-user)", file=sys.stderr)
            continue
        usable.append(name)
    return usable


def matrix(modes: list[str], machines: list[str], jobs: int, configuration: str) -> list[dict]:
    # Native cells twice: the same hash twice shows the mode is repeatable at all.
    cells = [(mode, machine) for machine in machines for mode in modes]
    cells += [(mode, "native") for mode in modes if "native" in machines]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_cell, mode, machine, configuration) for mode, machine in cells]
        results = []
        for future in concurrent.futures.as_completed(futures):
            cell = future.result()
            print(json.dumps(cell), file=sys.stderr, flush=True)
            results.append(cell)
    return sorted(results, key=lambda cell: (modes.index(cell["mode"]), machines.index(cell["machine"])))


def speed(modes: list[str], repetitions: int) -> dict[str, list[float]]:
    """Seconds per epoch (after the first) per mode on SPEED, natively, modes interleaved so that load from
    others hits all alike."""
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repetitions):
        for mode in modes:
            cell = run_cell(mode, "native", "speed")
            print(json.dumps(cell), file=sys.stderr, flush=True)
            seconds[mode].append(cell.get("epoch_seconds", float("nan")))
    return seconds


def matrix_table(cells: list[dict], modes: list[str], machines: list[str]) -> str:
    lines = ["| mode | " + " | ".join(machines) + " | distinct |", "|---" * (len(machines) + 2) + "|"]
    for mode in modes:
        row = [cell for cell in cells if cell["mode"] == mode]
        entries = []
        for machine in machines:
            found = {cell.get("weights_sha256", "error") for cell in row if cell["machine"] == machine}
            entries.append(" / ".join(sorted(value[:8] for value in found)))
        distinct = {cell["weights_sha256"] for cell in row if "weights_sha256" in cell}
        lines.append(f"| {mode} | " + " | ".join(entries) + f" | {len(distinct)} |")
    return "\n".join(lines)


def speed_table(seconds: dict[str, list[float]]) -> str:
    baseline = statistics.median(seconds["host"]) if "host" in seconds else None
    lines = ["| mode | seconds per epoch (median) | runs | ratio to host |", "|---|---|---|---|"]
    for mode, values in seconds.items():
        median = statistics.median(values)
        ratio = f"{median / baseline:.2f}" if baseline else "-"
        lines.append(f"| {mode} | {median:.2f} | {', '.join(f'{value:.2f}' for value in values)} | {ratio} |")
    return "\n".join(lines)


def write_expected(cells: list[dict]) -> None:
    hashes = {cell.get("weights_sha256") for cell in cells if cell["mode"] == "portable"}
    if len(hashes) != 1 or None in hashes:
        print(f"not writing the expected hash: the portable mode gave {sorted(map(str, hashes))}", file=sys.stderr)
        return
    expected = {"configuration": TINY, "environment": PORTABLE_ENVIRONMENT, "weights_sha256": hashes.pop()}
    (OUTPUT / "portable_weights.json").write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cpus", default=",".join(MACHINES), help=f"machines, of: {', '.join(MACHINES)}")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once")
    parser.add_argument("--speed", action="store_true", help="also time each mode natively on a larger run")
    parser.add_argument("--speed-only", action="store_true", help="time the modes, skip the matrix")
    parser.add_argument("--repetitions", type=int, default=3, help="speed runs per mode")
    parser.add_argument("--expected", action="store_true", help="write portable_weights.json if portable held")
    parser.add_argument("--configuration", default="tiny", choices=list(CONFIGURATIONS), help="what the matrix trains")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        configuration = CONFIGURATIONS[arguments.configuration]
        xla = arguments.child.startswith(("xla", "portable_xla"))
        # The portable modes train as train.determinism: portable, which refuses to run without its settings.
        determinism = "portable" if arguments.child.startswith("portable") else "host"
        print(json.dumps(train_once(configuration, xla=xla, determinism=determinism)))
        return
    modes, machines = arguments.modes.split(","), available_machines(arguments.cpus.split(","))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    if not arguments.speed_only:
        name = arguments.configuration
        cells = matrix(modes, machines, arguments.jobs, name)
        record = {"configuration": CONFIGURATIONS[name], "cells": cells}
        (OUTPUT / f"matrix_{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(matrix_table(cells, modes, machines))
        if arguments.expected and name == "tiny":
            write_expected(cells)
    if arguments.speed or arguments.speed_only:
        seconds = speed(modes, arguments.repetitions)
        (OUTPUT / "speed.json").write_text(json.dumps({"configuration": SPEED, "seconds": seconds}, indent=2) + "\n")
        print("\n" + speed_table(seconds))


if __name__ == "__main__":
    main()

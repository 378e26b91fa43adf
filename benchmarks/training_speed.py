"""Training speed, side by side in one invocation: the seed tutorial's plain Keras program,
scikit-learn's MLPClassifier with the same layers and batch, Keras' own loop at its fastest
(`model.fit` with XLA and 64 steps per execution) and this pipeline's training path.

    python benchmarks/training_speed.py [--epochs N] [--repetitions R [--vary-seed]] [--repro [--baseline REV]]
                                        [--output FILE]

Each contender runs in its own process (so its peak memory is its own) on the
same MNIST files: data/raw/mnist/ if the download stage ran, else MLP_DATA_MIRROR's
mnist/ folder. The table gives seconds per epoch (median of epochs 2..N, the
first one pays for tracing), images per second (the ratios compare these: the plain program's
epochs hold 60,000 images, the pipeline's 54,000), test accuracy (with --vary-seed
one seed per repetition, and their mean), the ratio to the
plain program, the fraction of the arithmetic floor (6 x parameters x images
FLOP at the GEMM rate measured in the same run) and peak RSS. With --repro it
also times whole `dvc repro --force` runs of the committed HEAD and their
overhead (the run minus fitting); with --baseline REV the same runs of an
earlier revision beside them, for before/after in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices would bury the table
sys.path.insert(0, str(REPOSITORY))

import numpy as np  # noqa: E402 - after the path: the project's modules are imported below

from pipeline.decoders import read_idx_images_and_labels  # noqa: E402

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CONTENDERS = ("plain", "sklearn", "keras_fit", "pipeline")
PARAMETERS = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # 269,322


def mnist_folder() -> Path:
    for folder in (REPOSITORY / "data/raw/mnist", Path(os.environ.get("MLP_DATA_MIRROR", "/nonexistent")) / "mnist"):
        if all((folder / name).exists() for name in MNIST_FILES + TEST_FILES):
            return folder
    sys.exit("no MNIST files: run `dvc repro download` or set MLP_DATA_MIRROR to a folder holding mnist/")


def load_mnist():
    folder = mnist_folder()
    train = read_idx_images_and_labels(*(folder / name for name in MNIST_FILES), (28, 28), 10)
    test = read_idx_images_and_labels(*(folder / name for name in TEST_FILES), (28, 28), 10)
    return train, test


def plain(epochs: int, seed_offset: int) -> dict:
    """Atienza's listing 1.3.2 as the book writes it (mnist.load_data() replaced by the local files):
    unseeded, so every run draws its own weights and order."""
    from keras.layers import Activation, Dense, Dropout
    from keras.models import Sequential
    from keras.utils import to_categorical

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train = np.reshape(x_train, [-1, 784]).astype("float32") / 255
    x_test = np.reshape(x_test, [-1, 784]).astype("float32") / 255
    y_train, y_test = to_categorical(y_train), to_categorical(y_test)
    model = Sequential()
    model.add(Dense(256, input_dim=784))
    model.add(Activation("relu"))
    model.add(Dropout(0.45))
    model.add(Dense(256))
    model.add(Activation("relu"))
    model.add(Dropout(0.45))
    model.add(Dense(10))
    model.add(Activation("softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    timer = epoch_timer()
    model.fit(x_train, y_train, epochs=epochs, batch_size=128, callbacks=[timer], verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    return {"epoch_seconds": timer.times, "images": len(x_train), "test_accuracy": accuracy}


def sklearn(epochs: int, seed_offset: int) -> dict:
    from sklearn.neural_network import MLPClassifier

    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train = x_train.reshape(-1, 784).astype("float32") / 255
    x_test = x_test.reshape(-1, 784).astype("float32") / 255
    model = MLPClassifier((256, 256), batch_size=128, random_state=42 + seed_offset)
    times = []
    for _ in range(epochs):  # partial_fit: one pass over the data per call
        start = time.perf_counter()
        model.partial_fit(x_train, y_train, classes=np.arange(10))
        times.append(time.perf_counter() - start)
    return {"epoch_seconds": times, "images": len(x_train), "test_accuracy": model.score(x_test, y_test)}


def pipeline(epochs: int, seed_offset: int) -> dict:
    """The train stage's path: pipeline.train.train() on data/processed/mnist (54,000 images + validation)."""
    from pipeline.config import load_params
    from pipeline.evaluate import evaluate
    from pipeline.paths import PARAMS_FILE, processed_directory
    from pipeline.splits import load_split
    from pipeline.train import train_with_params

    os.chdir(REPOSITORY)
    params = load_params(PARAMS_FILE)
    train = params.train.model_copy(update={"epochs": epochs})
    params = params.model_copy(update={"train": train, "seed": params.seed + seed_offset})
    processed = processed_directory(params.dataset.name)
    training, validation = (load_split(processed, name) for name in ("train", "validation"))
    test = load_split(processed, "test")
    timer = epoch_timer()
    model, _ = train_with_params(params, training, validation, callbacks=[timer])
    accuracy = evaluate(model, test.inputs, test.labels, class_names=[str(digit) for digit in range(10)])["test"][
        "accuracy"
    ]
    return {"epoch_seconds": timer.times, "images": len(training.labels), "test_accuracy": accuracy}


def keras_fit(epochs: int, seed_offset: int) -> dict:
    """Keras' own loop at its fastest, against which the train stage's loop must earn its place: the
    same model, data and per-epoch seeded order, through `model.fit` with XLA (jit_compile=True) and
    64 steps per execution on a tf.data stream. Op determinism stays off here: with it on, Keras
    compiles without XLA (Model.compile warns and sets jit_compile=False)."""
    import keras
    import tensorflow as tf

    from pipeline.config import load_params
    from pipeline.evaluate import evaluate
    from pipeline.model import build_mlp, make_optimizer
    from pipeline.paths import PARAMS_FILE, processed_directory
    from pipeline.splits import load_split

    os.chdir(REPOSITORY)
    params = load_params(PARAMS_FILE)
    seed = params.seed + seed_offset
    processed = processed_directory(params.dataset.name)
    training, validation, test = (load_split(processed, name) for name in ("train", "validation", "test"))
    keras.utils.set_random_seed(seed)
    model = build_mlp(
        training.inputs, num_classes=10, task="multiclass", config=params.model, scaling=params.dataset.scaling
    )
    batch_size = params.train.batch_size
    model.compile(
        optimizer=make_optimizer(params.optimizer),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=True,
        steps_per_execution=64,
    )
    inputs, labels = tf.constant(training.inputs), tf.constant(training.labels)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(training.labels), dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    batches = (
        tf.data.Dataset.range(epochs)
        .flat_map(epoch_order)
        .map(lambda index: (tf.gather(inputs, index), tf.gather(labels, index)))
        .prefetch(tf.data.AUTOTUNE)
    )
    timer = epoch_timer()
    model.fit(
        batches,
        epochs=epochs,
        steps_per_epoch=-(-len(training.labels) // batch_size),
        validation_data=(validation.inputs, validation.labels),
        callbacks=[timer],
        verbose=0,
    )
    accuracy = evaluate(model, test.inputs, test.labels, class_names=[str(digit) for digit in range(10)])["test"][
        "accuracy"
    ]
    return {"epoch_seconds": timer.times, "images": len(training.labels), "test_accuracy": accuracy}


def gemm_rate() -> dict:
    """GFLOP/s of TensorFlow's matrix product at the MLP's first layer's shape and at 2048^3."""
    import tensorflow as tf

    @tf.function
    def repeated_product(a, b, repeats):
        total = tf.zeros((a.shape[0], b.shape[1]))
        for _ in tf.range(repeats):
            total += tf.matmul(a, b)
        return total

    rates = {}
    for name, (m, k, n) in {"128x784x256": (128, 784, 256), "2048^3": (2048, 2048, 2048)}.items():
        a, b = tf.random.normal((m, k)), tf.random.normal((k, n))
        repeats = tf.constant(max(1, int(2e10 / (2 * m * k * n))))
        repeated_product(a, b, repeats).numpy()  # trace and warm up
        start = time.perf_counter()
        repeated_product(a, b, repeats).numpy()
        rates[name] = 2 * m * k * n * int(repeats) / (time.perf_counter() - start) / 1e9
    return rates


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    timer.times = []
    return timer


WORKERS = {"plain": plain, "sklearn": sklearn, "keras_fit": keras_fit, "pipeline": pipeline}


def run_worker(name: str, epochs: int, seed_offset: int = 0) -> dict:
    """Run one contender in a fresh process; its figures and peak RSS."""
    command = [sys.executable, __file__, "--worker", name, "--epochs", str(epochs), "--seed-offset", str(seed_offset)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def timed_repros(revisions: dict[str, str], repetitions: int) -> dict[str, list[dict]]:
    """Whole `dvc repro --force` runs of each revision (label -> git revision), interleaved, each in a
    git worktree of its own that shares this repository's DVC cache and one temporary MLflow store."""
    results: dict[str, list[dict]] = {label: [] for label in revisions}
    with tempfile.TemporaryDirectory(prefix="repro-bench-") as scratch:
        environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
        trees = {label: Path(scratch) / label for label in revisions}
        try:
            for label, revision in revisions.items():
                prepare_worktree(trees[label], revision, environment)
            for _ in range(repetitions):
                for label in revisions:
                    results[label].append(timed_repro(trees[label], environment))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPOSITORY, capture_output=True)
    return results


def prepare_worktree(tree: Path, revision: str, environment: dict) -> None:
    """A checkout of `revision` with the data stages' outputs from the shared cache, and a created MLflow store
    (so that no timed run pays for creating one)."""
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=REPOSITORY, check=True)
    run = lambda *command: subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)  # noqa: E731
    run("dvc", "config", "--local", "cache.dir", str(REPOSITORY / ".dvc" / "cache"))
    run("dvc", "checkout", "download", "preprocess")  # their outputs, wherever the revision keeps them
    run(sys.executable, "-c", "from pipeline.tracking import open_store; open_store()")


def timed_repro(tree: Path, environment: dict) -> dict:
    """A whole `dvc repro --force`, the train stage's fitting time from its log, and the peak RSS of its
    largest process (the train stage), measured in a process of its own so that no other run counts."""
    measure = (
        "import json, resource, subprocess, sys, time; start = time.perf_counter(); "
        "result = subprocess.run(['dvc', 'repro', '--force'], capture_output=True, text=True); "
        "sys.stderr.write(result.stderr); "
        "print(json.dumps({'seconds': time.perf_counter() - start, 'returncode': result.returncode, "
        "'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    result = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, cwd=tree, env=environment)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["returncode"] != 0:
        sys.exit(f"dvc repro --force failed in {tree}:\n{result.stderr[-2000:]}")
    fit = [
        float(line.split("fitted in ")[1].split(" s")[0]) for line in result.stderr.splitlines() if "fitted in " in line
    ]
    return {**figures, "fit_seconds": fit[0] if fit else float("nan")}


def repro_lines(results: dict[str, list[dict]], revisions: dict[str, str]) -> list[str]:
    lines = [
        "| `dvc repro --force` of | whole run (s) | fitting (s) | overhead: run minus fitting (s) | "
        "peak RSS of the train stage (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, runs in results.items():
        whole = ", ".join(f"{run['seconds']:.1f}" for run in runs)
        fit = ", ".join(f"{run['fit_seconds']:.1f}" for run in runs)
        overhead = ", ".join(f"{run['seconds'] - run['fit_seconds']:.1f}" for run in runs)
        rss = ", ".join(f"{run['peak_rss_kib'] / 1024:,.0f}" for run in runs)
        lines.append(f"| {label} (`{revisions[label]}`) | {whole} | {fit} | {overhead} | {rss} |")
    return lines


def table(results: dict[str, list[dict]], rates: dict, epochs: int) -> list[str]:
    reference = results.get("plain") or next(iter(results.values()))  # the ratios' reference: plain if it ran
    # By images per second: the contenders' epochs differ in size.
    plain_rate = reference[0]["images"] / statistics.median(median_epoch(run) for run in reference)
    lines = [
        "| contender | s/epoch (median of epochs 2..N) | images/s | test accuracy | images/s over plain | "
        "fraction of GEMM floor | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        epoch = statistics.median(median_epoch(run) for run in runs)
        images = runs[0]["images"]
        floor = 6 * PARAMETERS * images / (rates["128x784x256"] * 1e9)
        accuracy = ", ".join(f"{100 * run['test_accuracy']:.2f}%" for run in runs)
        if len(runs) > 1:
            accuracy += f" (mean {100 * statistics.mean(run['test_accuracy'] for run in runs):.2f}%)"
        rss = max(run["peak_rss_kib"] for run in runs) / 1024
        lines.append(
            f"| {name} | {epoch:.2f} | {images / epoch:,.0f} | {accuracy} | {images / epoch / plain_rate:.2f}x | "
            f"{floor / epoch:.0%} | {rss:,.0f} |"
        )
    return lines


def git_revision(name: str) -> str:
    result = subprocess.run(["git", "rev-parse", "--short", name], cwd=REPOSITORY, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"--baseline {name}: not a git revision of this repository")
    return result.stdout.strip()


def median_epoch(run: dict) -> float:
    times = run["epoch_seconds"]
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per contender (default: %(default)s)")
    parser.add_argument("--repetitions", type=int, default=1, help="runs of each contender (default: %(default)s)")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--repro", action="store_true", help="also time whole `dvc repro --force` runs of HEAD")
    parser.add_argument(
        "--baseline", metavar="REV", help="with --repro: time the same runs of this git revision too, interleaved"
    )
    parser.add_argument(
        "--vary-seed",
        action="store_true",
        help="repetition R trains with seed + R (the plain program is unseeded anyway): accuracy over seeds",
    )
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--seed-offset", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        figures = WORKERS[arguments.worker](arguments.epochs, arguments.seed_offset)
        figures["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(figures, default=float))
        return
    rates = gemm_rate()
    results = {name: [] for name in arguments.contenders}
    for repetition in range(arguments.repetitions):
        for name in arguments.contenders:  # interleaved: load changes affect every contender alike
            offset = repetition if arguments.vary_seed else 0
            results[name].append(run_worker(name, arguments.epochs, offset))
    lines = [
        f"Training speed, {date.today()}, {cpu_name()}, {os.cpu_count()} cores; "
        f"{arguments.epochs} epochs x {arguments.repetitions} repetition(s)"
        f"{' with seeds seed, seed + 1, ...' if arguments.vary_seed else ''}; GEMM "
        + ", ".join(f"{rate:.0f} GFLOP/s at {shape}" for shape, rate in rates.items()),
        "",
        *table(results, rates, arguments.epochs),
    ]
    if arguments.repro:
        revisions = {"current": git_revision("HEAD")}
        if arguments.baseline:
            revisions = {"baseline": git_revision(arguments.baseline), **revisions}
        lines += ["", *repro_lines(timed_repros(revisions, arguments.repetitions), revisions)]
    print("\n".join(lines))
    if arguments.output:
        arguments.output.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

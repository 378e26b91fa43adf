"""Every file and folder the pipeline reads or writes, relative to the repository root.

dvc.yaml names the same paths: a stage's outputs here are its `outs` there.
"""

from pathlib import Path

# Configuration
PARAMS_FILE = Path("params.yaml")
CONFIG_DIRECTORY = Path("conf")
LOCK_FILE = Path("dvc.lock")
REQUIREMENTS_LOCK = Path("requirements.lock")

# Data: DVC-tracked, kept out of git; a folder per dataset (docs/datasets.md, "Datasets side by side").
RAW_ROOT = Path("data/raw")
PROCESSED_ROOT = Path("data/processed")
MODEL_DIRECTORY = Path("data/model")
MODEL_FILE = MODEL_DIRECTORY / "model.keras"
# The MLflow run the train stage opened, which the evaluate stage finishes.
RUN_FILE = MODEL_DIRECTORY / "mlflow_run.json"

# Training state saved at every epoch end, resumed after a crash (pipeline.training)
CHECKPOINTS_DIRECTORY = Path(".checkpoints")

# Reports: small, kept in git so `dvc metrics/params/plots diff` compare commits
REPORTS_DIRECTORY = Path("reports")
CLASS_COUNTS_FILE = REPORTS_DIRECTORY / "class_counts.json"
SAMPLES_FILE = REPORTS_DIRECTORY / "samples.png"
HISTORY_FILE = REPORTS_DIRECTORY / "training_history.csv"
SUMMARY_FILE = REPORTS_DIRECTORY / "model_summary.txt"
MODEL_CONFIG_FILE = REPORTS_DIRECTORY / "model_config.json"
ARCHITECTURE_FILE = REPORTS_DIRECTORY / "architecture.png"
METRICS_FILE = REPORTS_DIRECTORY / "metrics.json"
# Per-class scores in a file of their own, so that `dvc metrics show` and
# `dvc exp show` list the headline test metrics first.
PER_CLASS_METRICS_FILE = REPORTS_DIRECTORY / "per_class_metrics.json"
CONFUSION_CSV = REPORTS_DIRECTORY / "confusion_matrix.csv"
CONFUSION_PNG = REPORTS_DIRECTORY / "confusion_matrix.png"
LEARNING_CURVES_PNG = REPORTS_DIRECTORY / "learning_curves.png"
CLASSIFICATION_REPORT_FILE = REPORTS_DIRECTORY / "classification_report.txt"
STUDY_REPORTS_DIRECTORY = REPORTS_DIRECTORY / "studies"

# MLflow's default store, at the repository root
STORE_FILE = "mlflow.db"
ARTIFACTS_DIRECTORY = "mlartifacts"


def raw_directory(dataset_name: str) -> Path:
    """The dataset's published files, as the download stage verified them."""
    return RAW_ROOT / dataset_name


def data_sources_file(raw_folder: Path) -> Path:
    """Where each file in `raw_folder` came from (a mirror, a URL, a local file): beside the folder, not a DVC
    output, as the verified files are the same whichever source served them."""
    return raw_folder.with_name(f"{raw_folder.name}.sources.json")  # data/raw/<dataset>.sources.json


def processed_directory(dataset_name: str) -> Path:
    """The dataset's splits, {train,validation,test}.npz, as the preprocess stage wrote them."""
    return PROCESSED_ROOT / dataset_name


def rerun_hint(stage: str) -> str:
    """What to run when a stage's output is missing or unreadable."""
    return f"run the {stage} stage first (dvc repro {stage})"


def repair_hint(stage: str) -> str:
    """What to run when a stage's output is corrupt."""
    return f"rebuild it with `dvc repro --force {stage}`"

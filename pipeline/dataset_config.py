"""The schema of a dataset's configuration (conf/dataset/<name>.yaml): files, format, shape, classes."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Md5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class StrictModel(BaseModel):
    # Unknown keys are errors: a misspelled key must not be silently ignored.
    # inf and nan are refused in every float: they would train a NaN model.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class FileSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # in data/raw/ and in a mirror's <dataset>/ folder
    # The file's name at the public URLs, where it differs from `name`.
    remote_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    size: PositiveInt  # bytes
    sha256: Sha256 | None = None
    # Only where no sha256 is published; sha256 is preferred when both are given.
    md5: Md5 | None = None

    @model_validator(mode="after")
    def has_a_checksum(self) -> FileSpec:
        if self.sha256 is None and self.md5 is None:
            raise ValueError(f"file {self.name} needs a sha256 (or, failing that, an md5) to be verified")
        return self


class CsvLayout(StrictModel):
    delimiter: str = Field(min_length=1, max_length=1)
    header_rows: int = Field(ge=0)  # lines to skip before the data
    feature_columns: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)  # 0-based
    label_column: int = Field(ge=0)


# The files each format reads, by role.
FORMAT_FILES = {
    "idx": ("train_images", "train_labels", "test_images", "test_labels"),
    "cifar_python": ("archive",),
    "csv": ("table",),
}


class DatasetConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    format: Literal[tuple(FORMAT_FILES)]  # type: ignore[valid-type]
    # multiclass: softmax over num_classes; binary: one sigmoid unit, binary cross-entropy.
    task: Literal["multiclass", "binary"]
    urls: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(min_length=1)
    files: dict[str, FileSpec]
    input_shape: list[PositiveInt] = Field(min_length=1, max_length=3)
    num_classes: int = Field(ge=2)
    class_names: list[str]
    # unit_interval: pixels / 255; standardize: zero mean, unit variance, fitted on the training split.
    scaling: Literal["unit_interval", "standardize"]
    validation_fraction: float = Field(ge=0.0, lt=1.0)
    # Only for formats without a published test split (csv): the share held out for testing.
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    csv: CsvLayout | None = None
    max_train_samples: PositiveInt | None
    max_test_samples: PositiveInt | None

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)

    @model_validator(mode="after")
    def consistent(self) -> DatasetConfig:
        expected = set(FORMAT_FILES[self.format])
        if set(self.files) != expected:
            raise ValueError(
                f"dataset.files of format {self.format} must name {sorted(expected)}, found {sorted(self.files)}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"dataset.class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if self.task == "binary" and self.num_classes != 2:
            raise ValueError(f"dataset.task binary needs num_classes 2, found {self.num_classes}")
        if (self.format == "csv") != (self.csv is not None) or (self.format == "csv") != (
            self.test_fraction is not None
        ):
            raise ValueError("dataset.csv and dataset.test_fraction are required for format csv, and only for it")
        if self.csv is not None and len(self.csv.feature_columns) != self.num_features:
            raise ValueError(
                f"dataset.csv.feature_columns lists {len(self.csv.feature_columns)} columns "
                f"but dataset.input_shape {self.input_shape} has {self.num_features} features"
            )
        # A stratified split needs at least one example of every class on each side.
        smallest = 2 * self.num_classes
        for key in ("max_train_samples", "max_test_samples"):
            value = getattr(self, key)
            if value is not None and value < smallest:
                raise ValueError(f"dataset.{key} = {value} is too small to stratify: use at least {smallest} or null")
        if self.max_train_samples and 0 < self.validation_fraction * self.max_train_samples < self.num_classes:
            raise ValueError(
                f"dataset.validation_fraction = {self.validation_fraction} of {self.max_train_samples} samples "
                f"leaves fewer validation examples than the {self.num_classes} classes"
            )
        return self

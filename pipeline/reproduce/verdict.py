"""How `mlp reproduce` reaches its verdict, and the tolerances it judges by. In an identical environment the same
operations in the same order give the same bits, so any difference there is a mismatch. In another one (another CPU
or thread count rounds differently) the weights may differ, but no test metric may move further than another seed
moves it: `mlp tolerance` measures that spread into reports/tolerance/<configuration sha256>.json (committed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import hardware
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.paths import REPORTS_DIRECTORY

IDENTICAL, EQUIVALENT, MISMATCH = "identical", "equivalent", "mismatch"
EXIT_STATUS = {IDENTICAL: 0, EQUIVALENT: 3, MISMATCH: 1}
TOLERANCE_DIRECTORY = REPORTS_DIRECTORY / "tolerance"
# Not part of what is measured: the seed is what varies, the others only name things.
UNMEASURED_KEYS = {"seed", "mirror", "mlflow"}


def configuration_sha256(params: Params) -> str:
    """sha256 of the configuration without seed, mirror and MLflow names: the key of its tolerance file."""
    return hardware.digest(params.model_dump(mode="json", exclude=UNMEASURED_KEYS))


def tolerance_file(params: Params, repository: Path = Path()) -> Path:
    return repository / TOLERANCE_DIRECTORY / f"{configuration_sha256(params)}.json"


def read_tolerances(params: Params, repository: Path = Path()) -> dict[str, float] | None:
    """Metric -> tolerance measured for this configuration, or None when `mlp tolerance` has not measured it."""
    path = tolerance_file(params, repository)
    if not path.exists():
        return None
    try:
        return {name: float(value) for name, value in json.loads(path.read_text(encoding="utf-8"))["tolerance"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PipelineError(
            f"{path} is not a tolerance file ({error}): measure it again with `mlp tolerance`"
        ) from None


@dataclass
class Comparison:
    name: str
    original: float | str
    reproduced: float | str | None
    kind: str = "metric"  # metric, weights or data
    tolerance: float | None = None

    @property
    def matches(self) -> bool:
        return self.original == self.reproduced

    @property
    def within_tolerance(self) -> bool:
        numeric = isinstance(self.reproduced, float | int) and self.tolerance is not None
        return numeric and abs(float(self.reproduced) - float(self.original)) <= self.tolerance

    def verdict(self, environment_differs: bool) -> str:
        """This row's word: in another environment, the weights may differ and a metric may move a little."""
        if self.matches:
            return "match"
        if not environment_differs or self.kind == "data":
            return "MISMATCH"
        if self.kind == "weights":
            return "differs (expected)"
        if self.tolerance is None:
            return "differs (no tolerance)"
        return f"within {self.tolerance:.4g}" if self.within_tolerance else f"MISMATCH (beyond {self.tolerance:.4g})"


@dataclass
class Reproduction:
    run_id: str
    comparisons: list[Comparison]
    # How the reproduction's environment differs from the recorded run's, one line per field; [] when it does not.
    environment: list[str] = field(default_factory=list)
    environment_compared_by: str = "fingerprint"
    tolerance_source: str | None = None  # a tolerance file, or --tolerance
    # The stage inputs (`train.deps.<path>`) whose dvc.lock md5 is not the recorded run's; None: not compared.
    # They explain a difference rather than decide the verdict: the results above do that.
    stage_inputs: list[str] | None = None

    def judge(self) -> tuple[str, str]:
        """The verdict and, in a few words, why."""
        changed = ", ".join(dict.fromkeys(line.split()[0] for line in self.environment))
        if all(comparison.matches for comparison in self.comparisons):
            return IDENTICAL, f"identical although the environment differs: {changed}" if changed else IDENTICAL
        if any(not comparison.matches for comparison in self.comparisons if comparison.kind == "data"):
            return MISMATCH, "MISMATCH: the data differ from the recorded run's"
        if not self.environment:
            return MISMATCH, (
                "MISMATCH in an identical environment: the result should have been bitwise identical, so code, "
                "data or configuration changed, or training is not deterministic: a real problem"
            )
        judged = [item for item in self.comparisons if item.kind == "metric" and item.tolerance is not None]
        if not judged:
            return MISMATCH, (
                f"MISMATCH: the environment differs ({changed}), and no tolerance is known for this "
                "configuration to judge the metrics by: measure one with `mlp tolerance`, or give --tolerance"
            )
        outside = [comparison.name for comparison in judged if not comparison.within_tolerance]
        if outside:
            return MISMATCH, (
                f"MISMATCH: the environment differs ({changed}), and {', '.join(outside)} moved further than "
                "another seed moves it"
            )
        return EQUIVALENT, f"equivalent within tolerance (environment differs: {changed})"

    def report(self, original_run_id: str) -> str:
        lines = [f"reproduction {self.run_id} of run {original_run_id}:"]
        compared_by = f"compared by {self.environment_compared_by}"
        if self.environment:
            lines.append(f"  the environment differs from the recorded run's ({compared_by}):")
            lines += [f"    {line}" for line in self.environment]
            lines.append("  so bitwise identical weights are not expected; the metrics are judged against")
            lines.append(f"  the tolerance {self.tolerance_source or '(none known)'}")
        else:
            lines.append(f"  the environment is the recorded run's ({compared_by})")
        for item in self.comparisons:
            verdict = item.verdict(bool(self.environment))
            lines.append(f"  {item.name:<34} {item.original!s:<66} {item.reproduced!s:<66} {verdict}")
        if self.stage_inputs:
            lines.append(f"  dvc.lock: stage inputs not as recorded: {', '.join(self.stage_inputs)}")
        elif self.stage_inputs is not None:
            lines.append("  dvc.lock: every stage input (code, data, requirements.lock) as recorded")
        lines.append(f"verdict: {self.judge()[1]}")
        return "\n".join(lines)

"""The three verdicts of `mlp reproduce` and how a reproduction reaches one.

identical (exit status 0): the weights' sha256, every test metric and the data are the recorded ones.
equivalent (3): the weights differ, but so does the environment (CPU fingerprint, thread counts,
    packages), where bitwise identity is not expected, and every test metric lies within its
    tolerance (`mlp tolerance`'s spread across seeds, or --tolerance).
mismatch (1): anything else. In an identical environment the same operations in the same order give
    the same bits, so any difference means code, data or configuration changed, or training is not
    deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDENTICAL, EQUIVALENT, MISMATCH = "identical", "equivalent", "mismatch"
EXIT_STATUS = {IDENTICAL: 0, EQUIVALENT: 3, MISMATCH: 1}


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

    @property
    def verdict(self) -> str:
        return self.judge()[0]

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

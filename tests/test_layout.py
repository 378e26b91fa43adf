"""dvc.yaml is true to the code, and the code keeps the shape the README draws.

For each stage, the project modules it imports (transitively) are exactly the
Python files dvc.yaml lists as its deps, and every params key it reads is
declared: a change to an imported module always re-runs the stage, and no
stage re-runs for a module it does not import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPOSITORY

PACKAGE = REPOSITORY / "pipeline"
STAGES = ("validate", "download", "preprocess", "train", "evaluate")
# Read by a stage on purpose without being a DVC param: the mirror only says
# where files come from, and every file is verified by its pinned checksum.
UNDECLARED_ON_PURPOSE = {"mirror"}
# Methods that record the whole configuration (the MLflow run's params) rather than use it.
RECORDING_METHODS = {"model_dump"}


def module_path(name: str) -> Path | None:
    relative = Path(*name.split("."))
    for candidate in (REPOSITORY / relative.with_suffix(".py"), REPOSITORY / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_imports(path: Path) -> set[str]:
    """The pipeline modules `path` imports directly, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "pipeline" and module_path(name)}


def transitive_imports(module: str) -> set[str]:
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        # Importing pipeline.x runs pipeline/__init__.py first.
        parts = name.split(".")
        pending += [".".join(parts[:index]) for index in range(1, len(parts))]
        pending += sorted(project_imports(module_path(name)))
    return seen


def relative(name: str) -> str:
    return module_path(name).relative_to(REPOSITORY).as_posix()


def params_read(path: Path) -> set[str]:
    """Dotted params keys a stage module reads: attribute chains on `params` and on names bound to them."""
    tree = ast.parse(path.read_text())
    roots = {"params": ""}

    def chain(node: ast.AST) -> tuple[str, list[str]] | None:
        names = []
        while isinstance(node, ast.Attribute):
            names.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in roots:
            return node.id, names
        return None

    aliased = set()
    for node in ast.walk(tree):  # aliases such as `dataset = params.dataset`
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found = chain(node.value)
            if found and found[1]:
                roots[node.targets[0].id] = ".".join(filter(None, [roots[found[0]], *found[1]]))
                aliased.add(id(node.value))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    local_functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    # `params` handed to a function of the same module is scanned there.
    handed_on = {
        id(argument)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in local_functions
        for argument in node.args
    }
    outer = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    keys = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute | ast.Name) or id(node) in outer | handed_on | aliased:
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            continue
        found = chain(node)
        if not found:
            continue
        root, names = found
        if id(node) in called:  # a method: params.dataset.files.values() reads params.dataset.files
            if names and names[-1] in RECORDING_METHODS:
                continue
            names = names[:-1]
        key = ".".join(filter(None, [roots[root], *names]))
        if isinstance(node, ast.Name) and root == "params":
            key = ""  # `params` passed on whole: it reads everything
        keys.add(key)
    return keys


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml.safe_load((REPOSITORY / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", STAGES)
def test_python_deps_are_exactly_the_modules_the_stage_imports(stages, stage):
    declared = {dep for dep in stages[stage]["deps"] if dep.endswith(".py")}
    imported = {relative(name) for name in transitive_imports(f"pipeline.{stage}")}
    assert declared == imported, f"missing: {sorted(imported - declared)}; not imported: {sorted(declared - imported)}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_params_key_the_stage_reads_is_declared(stages, stage):
    entries = stages[stage].get("params", [])
    if {"params.yaml": None} in entries:
        return  # the whole file is declared
    declared = set(entries)
    read = params_read(PACKAGE / f"{stage}.py") - UNDECLARED_ON_PURPOSE
    assert read, "the scan found no params read at all: it is broken"
    undeclared = {key for key in read if not any(key == d or key.startswith(f"{d}.") for d in declared)}
    assert not undeclared, f"stage {stage} reads params not declared in dvc.yaml: {sorted(undeclared)}"


def test_no_stage_imports_another_and_commands_stay_apart():
    for stage in STAGES:
        imported = transitive_imports(f"pipeline.{stage}")
        others = {f"pipeline.{other}" for other in STAGES if other != stage}
        assert not imported & others, f"stage {stage} imports {sorted(imported & others)}"
        assert not {name for name in imported if name.startswith(("pipeline.commands", "pipeline.cli"))}


def test_the_scan_sees_reads_through_aliases_and_whole_sections(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text(
        "dataset = params.dataset\n"
        "use(dataset.name, params.train.loss, params.model)\n"
        "for spec in params.dataset.files.values(): pass\n"
        "flatten(params.model_dump())\n"
    )
    assert params_read(source) == {"dataset.name", "train.loss", "model", "dataset.files"}


def test_the_readme_shows_a_result_first_then_the_two_commands_and_stays_short():
    lines = (REPOSITORY / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    sections = [line for line in lines if line.startswith("## ")]
    assert sections[0] == "## Two commands"
    picture = next(line for line in lines if line.startswith("!["))
    assert lines.index(picture) < lines.index("## Two commands")
    assert (REPOSITORY / picture.split("(")[1].rstrip(")")).is_file()
    # Only the variables a user sets are in the README; the internal ones are documented elsewhere.
    assert "MLP_DETERMINISM_RESTARTED" not in "\n".join(lines)

"""The Hydra overrides that compose conf/ into a given params.yaml, in the form a user types them: the group
choices, then the keys that still differ (`+key=value`, `~key`); docs/mlflow.md, `config.overrides`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from pipeline.config import compose, flatten, read_yaml
from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIRECTORY

# The groups of conf/config.yaml's defaults list a user chooses from, in its order.
# dataset_train is left out: it follows the dataset choice.
GROUPS = ("dataset", "model", "optimizer", "train", "experiment")
# A string Hydra reads back as the same string without quotes.
PLAIN_STRING = re.compile(r"[A-Za-z_][\w\-./:@%]*")
HYDRA_KEYWORDS = {"true", "false", "null", "inf", "nan"}


def hydra_overrides(params: dict[str, Any], config_directory: Path = CONFIG_DIRECTORY) -> list[str]:
    """The group choices and key overrides that turn conf/'s default composition into `params`."""
    target = flatten(params)

    @functools.cache
    def differences(choices: tuple[str, ...]) -> list[str] | None:
        """The key overrides `params` still needs after these choices; None when Hydra refuses them."""
        try:
            # Composed and read as params.yaml is, so that both hold the same YAML types.
            composed = read_yaml(compose(list(choices), config_directory), "the composition of conf/")
        except ConfigError:
            return None
        return key_overrides(flatten(composed), target)

    choices: dict[str, str] = {}
    best = differences(())
    if best is None:  # conf/ alone does not compose: every key is an override
        best = key_overrides({}, target)
    for group in GROUPS:
        for option in candidates(config_directory / group, group, target, best):
            trial = {**choices, group: option}
            found = differences(choice_overrides(trial))  # a default option composes as without it: not fewer
            if found is not None and len(found) < len(best):
                choices, best = trial, found
    # A choice an experiment makes anyway (`experiment=brownlee_pima` brings `dataset=pima`) is left out.
    for group in list(choices) if len(choices) > 1 else []:
        trial = {name: option for name, option in choices.items() if name != group}
        found = differences(choice_overrides(trial))
        if found is not None and len(found) <= len(best):
            choices, best = trial, found
    return [*choice_overrides(choices), *best]


def candidates(folder: Path, group: str, target: dict[str, Any], differences: list[str]) -> list[str]:
    """The options of `group` worth composing: those whose own file sets a differing key to its target value."""
    differing = {override.lstrip("+~").split("=", 1)[0] for override in differences}
    found = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        # An experiment file is `# @package _global_`: its keys are full paths.
        prefix = "" if "@package _global_" in text else f"{group}."
        values = flatten({key: value for key, value in (read_yaml(text, path) or {}).items() if key != "defaults"})
        if any(prefix + key in differing and target.get(prefix + key) == value for key, value in values.items()):
            found.append(path.stem)
    return found


def choice_overrides(choices: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{group}={choices[group]}" for group in GROUPS if group in choices)


def key_overrides(composed: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """`key=value` for each key whose value differs, `+key=value` for a new one, `~key` for one removed."""
    changed = [
        f"{'' if key in composed else '+'}{key}={hydra_value(value)}"
        for key, value in target.items()
        if key not in composed or composed[key] != value
    ]
    removed = [f"~{key}" for key in composed if key not in target]
    return sorted(changed + removed, key=lambda override: override.lstrip("+~"))


def hydra_value(value: Any) -> str:
    """A flattened params value (never a mapping) in Hydra's override grammar, on one line: 0.3, [256,256], 'a b'."""
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # null, true, 10, 0.3, 1e-05: as Hydra reads them
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    text = str(value)
    if PLAIN_STRING.fullmatch(text) and text.lower() not in HYDRA_KEYWORDS:
        return text
    # In a quoted string a backslash escapes only a quote or the backslashes before one.
    escaped = re.sub(r"(\\*)('|$)", lambda match: match[1] * 2 + ("\\'" if match[2] else ""), text)
    return f"'{escaped}'"

"""The Hydra overrides that compose conf/ into a given params.yaml, in the form a user types them.

params.yaml is all a stage sees of `dvc exp run -S ...`: DVC does not pass the
overrides on. They are found again by composing: first the config group
choices (`dataset=pima`, `experiment=smoke`) that bring the composition
closest to params.yaml, then only the keys that still differ from that
composition (`model.dropout_rate=0.3`, `+key=value` for a key conf/ does not
have, `~key` for one it has and params.yaml lacks). Composing conf/ with the
result gives params.yaml again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import flatten
from pipeline.paths import CONFIG_DIRECTORY

# The groups of conf/config.yaml's defaults list a user chooses from, in its order.
# dataset_train is left out: it follows the dataset choice.
GROUPS = ("dataset", "model", "optimizer", "train", "experiment")
# A string Hydra reads back as the same string without quotes.
PLAIN_STRING = re.compile(r"[A-Za-z_][\w\-./:@%]*")
HYDRA_KEYWORDS = {"true", "false", "null", "inf", "nan"}

Composer = Callable[[list[str]], dict[str, Any] | None]


def hydra_overrides(params: dict[str, Any], config_directory: Path = CONFIG_DIRECTORY) -> list[str]:
    """The group choices and key overrides that turn conf/'s default composition into `params`."""
    target = flatten(params)
    defaults = default_choices(config_directory)
    with composer(config_directory) as compose:
        choices: dict[str, str] = {}
        best = key_overrides(compose([]) or {}, target)
        for group in GROUPS:
            for option in candidates(config_directory / group, group, target, best):
                if option == defaults.get(group):
                    continue
                trial = {**choices, group: option}
                composed = compose(choice_list(trial))
                if composed is not None and len(differences := key_overrides(composed, target)) < len(best):
                    choices, best = trial, differences
        # A choice an experiment makes anyway (`experiment=brownlee_pima` brings `dataset=pima`) is left out.
        for group in list(choices) if len(choices) > 1 else []:
            trial = {name: option for name, option in choices.items() if name != group}
            composed = compose(choice_list(trial))
            if composed is not None and len(differences := key_overrides(composed, target)) <= len(best):
                choices, best = trial, differences
    return choice_list(choices) + best


@contextmanager
def composer(config_directory: Path) -> Iterator[Composer]:
    """compose(overrides) -> the flattened, resolved composition, or None when Hydra refuses the overrides."""
    # Imported here: Hydra takes a moment to import, and only the train stage composes.
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known: dict[tuple[str, ...], dict[str, Any] | None] = {}

    def composed(overrides: list[str]) -> dict[str, Any] | None:
        if tuple(overrides) not in known:
            try:
                config = compose(config_name="config", overrides=overrides)
                known[tuple(overrides)] = flatten(OmegaConf.to_container(config, resolve=True))
            except (HydraException, OmegaConfBaseException):
                known[tuple(overrides)] = None
        return known[tuple(overrides)]

    with initialize_config_dir(str(config_directory.resolve()), version_base=None):
        yield composed


def default_choices(config_directory: Path) -> dict[str, str]:
    """{group: option} from the defaults list of config.yaml."""
    config = yaml.safe_load((config_directory / "config.yaml").read_text(encoding="utf-8")) or {}
    entries = [item for item in config.get("defaults", []) if isinstance(item, dict)]
    return {key: str(value) for item in entries for key, value in item.items()}


def candidates(folder: Path, group: str, target: dict[str, Any], differences: list[str]) -> list[str]:
    """The options of `group` worth composing: those whose own file sets a differing key to its target value."""
    if not differences:
        return []
    differing = {override.lstrip("+~").split("=", 1)[0] for override in differences}
    found = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        # An experiment file is `# @package _global_`: its keys are full paths.
        prefix = "" if "@package _global_" in text else f"{group}."
        values = flatten({key: value for key, value in (yaml.safe_load(text) or {}).items() if key != "defaults"})
        if any(prefix + key in differing and target.get(prefix + key) == value for key, value in values.items()):
            found.append(path.stem)
    return found


def choice_list(choices: dict[str, str]) -> list[str]:
    return [f"{group}={choices[group]}" for group in GROUPS if group in choices]


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
    """`value` in Hydra's override grammar, on one line: 0.3, null, [256,256], 'two words'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    text = str(value)
    if PLAIN_STRING.fullmatch(text) and text.lower() not in HYDRA_KEYWORDS:
        return text
    # In a quoted string a backslash escapes only a quote or the backslashes before one.
    escaped = re.sub(r"(\\*)('|$)", lambda match: match[1] * 2 + ("\\'" if match[2] else ""), text)
    return f"'{escaped}'"

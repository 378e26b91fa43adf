"""The YAML text of a dataset config, laid out as conf/dataset/mnist.yaml is."""

from __future__ import annotations

import yaml


class _FlowList(list):
    """A list written on one line, as mnist.yaml writes input_shape and class_names."""


class _Dumper(yaml.SafeDumper):
    """mnist.yaml's style: list items indented under their key, "0" rather than '0'."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


_Dumper.add_representer(
    _FlowList, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)

COMMENTS = {
    "urls": "Base URLs, tried in order; each must serve the files below byte for byte.",
    "files": "The publisher's files: sizes in bytes and checksums, computed by `mlp dataset add`.",
    "input_shape": "One example, before flattening into the MLP's input vector.",
    "validation_fraction": "Share of the training examples held out (stratified, seeded) for validation.",
    "max_train_samples": "Keep only this many training / test examples (stratified); null keeps all.",
}
MD5_COMMENT = "# The publisher gives only an md5: the download is verified by md5 and size."


def render(config: dict) -> str:
    """The YAML text of a dataset config, with a header saying how it was made and how to run it."""
    name = config["name"]
    lines = [
        f"# {name}: written by `mlp dataset add` from local copies of its published files",
        f"# (format {config['format']}; shape and classes read from the files). Run with:",
        f"# dvc exp run -S dataset={name}",
    ]
    for key, value in config.items():
        if key in COMMENTS:
            lines.append(f"# {COMMENTS[key]}")
        if key in ("input_shape", "class_names"):
            value = _FlowList(value)
        elif key == "csv":
            value = {**value, "feature_columns": _FlowList(value["feature_columns"])}
        text = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
        lines.append(text.rstrip("\n").replace("\n    md5: ", f"\n    {MD5_COMMENT}\n    md5: "))
    return "\n".join(lines) + "\n"

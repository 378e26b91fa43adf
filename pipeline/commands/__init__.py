"""The project's commands beyond the DVC stages, each run as `mlp <command>`.

Each module exposes `add_arguments(parser)` and `run(arguments)`; pipeline.cli
lists them.
"""

"""The `mlp` commands beside the DVC stages: each module has `add_arguments(parser)` and `run(arguments)`."""

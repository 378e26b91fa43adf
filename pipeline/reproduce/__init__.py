"""Reproduction of recorded runs (`mlp reproduce`, `mlp tolerance`): rebuild a run from its lineage and judge it."""

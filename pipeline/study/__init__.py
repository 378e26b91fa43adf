"""Published tables of configurations re-run through the pipeline and compared (`mlp study`)."""

"""A team tracking server on one machine: PostgreSQL from a pip wheel, `mlflow server` in front of it.

Everything it keeps is in one git-ignored state folder (pipeline.server.state). No password is ever on a
command line or in a URI: the server and the tools read them from files there.
"""

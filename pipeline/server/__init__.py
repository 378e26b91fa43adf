"""A team tracking server on one machine: PostgreSQL from a pip wheel, `mlflow server` in front of it.

`mlp server start|stop|status|backup|restore` (pipeline/commands/server.py) drive it.
Everything it keeps is in one git-ignored state folder (`.server/` by default):

    settings.json     host, port, workers, artifacts destination: what `start` was given, reused next time
    runtime.json      what runs now: the MLflow server's pid, PostgreSQL's port, the URL
    admin_password    MLflow's admin password, generated at the first start (mode 0600)
    secrets.json      PostgreSQL's passwords and Flask's secret key, generated (mode 0600)
    pgpass            libpq's password file for the server's own database roles (mode 0600)
    search.pgpass     the search role's password file, the only one users get (mode 0600)
    basic_auth.ini    MLflow's basic-auth configuration (mode 0600)
    postgres/         the PostgreSQL data folder: databases `mlflow` (tracking), `mlflow_auth` (users), `search`
    artifacts/        run artifacts, unless `--artifacts-destination` names another place (s3://...)
    logs/             postgres.log, mlflow.log
    backups/          what `mlp server backup` writes

No password is ever on a command line or in a URI: the server and the tools
read them from the files above.
"""

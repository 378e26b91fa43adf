"""The errors a user can cause: bad config, bad file, unreachable mirror.

Every stage and command runs under pipeline.stage.run_stage, which reports one
as one or two lines on stderr and exit status 1, without a traceback.
"""


class PipelineError(Exception):
    """An error the user can fix: bad config, bad file, unreachable mirror."""


class ConfigError(PipelineError):
    """params.yaml (the composition of conf/) holds a value no stage accepts."""


class DataError(PipelineError):
    """A data file is missing, corrupted, or not in the expected format."""


class DownloadError(PipelineError):
    """No URL served a file that verified."""

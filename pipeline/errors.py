"""The errors a user can cause, which pipeline.stage.run_stage reports in one or two lines, without a traceback."""


class PipelineError(Exception):
    """An error the user can fix: bad config, bad file, unreachable mirror."""


class ConfigError(PipelineError):
    """params.yaml (the composition of conf/) holds a value no stage accepts."""


class DataError(PipelineError):
    """A data file is missing, corrupted, or not in the expected format."""


class DownloadError(PipelineError):
    """No URL served a file that verified."""

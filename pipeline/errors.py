"""The project's own error types: expected failures a user can fix, each with a message that says how.

The command line prints these as one line and exits with code 2; any other exception is a bug
and keeps its traceback (`pipeline/cli.py`).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every expected failure; the message names the file, key or server and the fix."""


class ParamsError(PipelineError, ValueError):
    """params.yaml (or an override) is invalid; the message names the key."""


class DataError(PipelineError, ValueError):
    """The input data is unusable; the message names the file and the problem."""


class SourceUnavailableError(DataError):
    """The data source could not be reached (a download, a bucket, a server): worth retrying later."""


class MissingInputError(PipelineError, FileNotFoundError):
    """A file an earlier stage writes is missing; the message names it and the stage to run."""


class ModelFileError(PipelineError, ValueError):
    """A model file is refused: wrong format, checksum mismatch, or rejected by Keras safe mode."""


class TrackingError(PipelineError, RuntimeError):
    """The tracking server or registry cannot be used; the message names its URI."""


class RegistryError(PipelineError, RuntimeError):
    """The model registry is not in the state an operation needs (no champion, a stale run...)."""


class StorageError(PipelineError, OSError):
    """A disk cannot hold what a stage must write; the message names the folder, the bytes needed and free."""


class StudyStorageError(PipelineError, RuntimeError):
    """The tuning study's storage cannot be used; the message names its URL, password masked."""


class ClusterError(PipelineError, ValueError):
    """The cluster of a multi-worker fit (TF_CONFIG) is missing or invalid; the message says what to set."""

"""Errors that the package raises for bad input: each names the file and column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MusicRecError(Exception):
    """Base class for every error this package raises on purpose."""


class DataValidationError(MusicRecError):
    """A raw or artifact file does not match what the code expects.

    The message names the file, the column, what was expected and a few offending rows.
    """

    def __init__(
        self,
        file: str,
        column: str | None,
        expected: str,
        examples: Sequence[Any] | None = None,
        found: str | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.expected = expected
        self.examples = list(examples or [])[:5]
        self.found = found
        where = f"{file}" + (f", column '{column}'" if column else "")
        msg = f"{where}: expected {expected}"
        if found:
            msg += f"; found {found}"
        if self.examples:
            msg += f"; offending rows (first {len(self.examples)}): {self.examples}"
        super().__init__(msg)


class ConfigError(MusicRecError):
    """A pipeline config file is missing, unreadable or holds unknown or invalid values.

    The message names the file and every offending key."""


class ArtifactError(MusicRecError):
    """An artifact needed by a service or a stage is missing or corrupt."""


class StorageError(MusicRecError):
    """Object storage (S3) is unreachable, refuses the credentials or lacks the bucket.

    The message names the bucket and the endpoint, never a secret.
    """


class UploadInProgressError(StorageError):
    """The bucket's objects differ from its upload manifest: an upload is under way (or
    stopped half-way), so a download would mix two runs' files. Retrying later may work."""

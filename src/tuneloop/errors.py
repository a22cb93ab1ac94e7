"""User-facing errors: one clear line, no traceback, non-zero exit from the CLI."""

from __future__ import annotations


class TuneloopError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 1


class RecipeError(TuneloopError):
    """The recipe (YAML or a key=value override) is invalid."""


class DataError(TuneloopError):
    """A data file is missing, unreadable or has malformed rows."""


class ModelError(TuneloopError):
    """A model reference cannot be resolved or loaded."""


class RegistryError(TuneloopError):
    """A registry record is missing or the database cannot be opened."""


class TrainingError(TuneloopError):
    """Training cannot start or cannot go on (bad setup, non-finite loss, bad checkpoint)."""


class TrainingInterrupted(TuneloopError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can be resumed."""

    exit_code = 130


class NotFound(RegistryError):
    """A record (run, dataset, task, item, user) does not exist, or is not visible to who
    asked."""


class Forbidden(TuneloopError):
    """The account's role does not allow this (a viewer writing, an annotator reading
    another's blind answers)."""


class Conflict(TuneloopError):
    """The record changed since it was read (a stale edit) or is already complete; reload
    and try again. Never a silent overwrite."""

"""Typed errors raised by library code; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class FertrainError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class ConfigError(FertrainError):
    """A configuration file or override is invalid."""


class DataError(FertrainError):
    """Input data is missing, malformed or inconsistent."""


class ModelError(FertrainError):
    """A model file or run directory cannot be used."""


class MissingDependencyError(FertrainError):
    """An optional dependency needed for this feature is not installed."""


class TrainingDivergedError(FertrainError):
    """Training produced a NaN/inf loss."""

    exit_code = 4


class BelowThresholdError(FertrainError):
    """A quality gate failed, e.g. `evaluate --min-accuracy`: the result is valid but not good enough."""

    exit_code = 3

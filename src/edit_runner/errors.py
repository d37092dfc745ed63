"""Error types that carry a precise, user-facing message (what is wrong, where, how to fix it)."""


class EditRunnerError(Exception):
    """Base class of every error the runner raises on purpose."""


class ConfigError(EditRunnerError):
    """An invalid configuration value or an unsupported combination of choices."""


class DataError(EditRunnerError):
    """A malformed edit record or data file; the message names the record (case id) or field."""


class ModelError(EditRunnerError):
    """A model that cannot be loaded or whose architecture has no registered layout."""


class OptimizationError(EditRunnerError):
    """The target optimization diverged (NaN/inf) for a record."""

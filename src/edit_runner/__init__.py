"""edit-runner: a config-driven experiment runner for locate-then-edit knowledge editing."""

__version__ = "0.1.0"

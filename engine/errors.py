"""Errors that users see. Each carries one line that names the problem and the fix.

The CLI and the job entrypoints catch :class:`ConnectileError`, print its message on one line and exit
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConnectileError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ConfigError(ConnectileError):
    """A bad option, config key or value."""


class StorageError(ConnectileError):
    """A volume that is missing, corrupt, of the wrong kind, or cannot be written."""


class ResumeMismatch(ConnectileError):
    """Existing done-markers or output were made with another layout or other parameters."""


class BlocksFailed(ConnectileError):
    """A blockwise run ended with failed blocks (after retries)."""

    exit_code = 1

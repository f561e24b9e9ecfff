"""The two errors of the training system: bad input (before anything is written) and a run
that cannot go on. train.py turns them into one line and an exit code (`archs.cli_errors`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input found before the run starts: a one-line message, exit status 2."""


class RunError(RuntimeError):
    """A run that cannot go on (non-finite loss, full disk, unreadable checkpoints): a one-line
    message naming what to do, exit status 1; every checkpoint already written is kept."""

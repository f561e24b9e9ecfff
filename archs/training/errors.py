"""How a run ends: the two error types of the training system, the exit codes, one-line messages.

Every entry point (train.py, sweep.py, the report, `archs.summary`) reports bad input and
failures as one plain line; `first_line` makes that line out of any exception. The exit codes
are the run contract of docs/design.md: launchers requeue on PREEMPTED and stop on INTERRUPTED.
"""

from __future__ import annotations

import enum


class ConfigError(ValueError):
    """Bad user input found before the run starts: a one-line message, exit status 2."""


class RunError(RuntimeError):
    """A run that cannot go on (non-finite loss, full disk, unreadable checkpoints): a one-line
    message naming what to do, exit status 1; every checkpoint already written is kept."""


class ExitCode(enum.IntEnum):
    """Exit statuses of train.py (and of sweep.py, which passes on the gravest of its runs')."""

    COMPLETE = 0  # trained to the end, or evaluated (eval_only), or was already complete
    RUN_ERROR = 1  # RunError: the run cannot go on; its checkpoints are kept
    BAD_INPUT = 2  # ConfigError: nothing was written or compiled
    PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM, saved; run the same command to resume (requeue)
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C, saved; run the same command to resume


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error's message (its type name when it has none)."""
    text = error if isinstance(error, str) else str(error)
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return text.strip()[:limit] or type(error).__name__

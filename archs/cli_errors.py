"""How every command-line entry point ends: its exit codes, and one-line error messages.

train.py, sweep.py, the report, `archs.summary` and `archs.convert` report bad input and
failures as one plain line (`first_line` makes it out of any exception) and exit with these
codes: the run contract of docs/design.md, where launchers requeue on PREEMPTED and stop on
INTERRUPTED.
"""

from __future__ import annotations

import enum


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

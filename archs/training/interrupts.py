"""Stopping a run on request: SIGTERM (preemption) and SIGINT (Ctrl-C) save, then exit.

Both signals only set a flag; the loop asks `requested()` at every step boundary (and between
evaluation batches), saves a checkpoint and stops: exit 75 after SIGTERM, so launchers requeue
the run, and 130 after SIGINT, so they do not (docs/design.md, run contract). A second SIGINT
exits at once without saving. Several processes must stop at the same step: there JAX's
preemption sync point (its coordination service catches SIGTERM) decides, and SIGINT is turned
into a SIGTERM to this process so that it takes the same path.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

from archs.cli_errors import ExitCode

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Installs the SIGTERM/SIGINT handlers while entered (main thread, one process)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, Any] = {}
        self._checks = 0

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            # With several processes JAX's coordination service already handles SIGTERM.
            ours = _SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
            for sig in ours:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.signal == signal.SIGINT:
            print("\nsecond interrupt: exiting without saving", file=sys.stderr, flush=True)
            os._exit(ExitCode.INTERRUPTED)
        if self.signal is None:
            self.signal = sig
            what = "interrupted" if sig == signal.SIGINT else "SIGTERM"
            print(
                f"\n{what}: saving a checkpoint at the next step, then exiting"
                + (" (Ctrl-C again to exit now)" if sig == signal.SIGINT else ""),
                file=sys.stderr,
                flush=True,
            )
        if jax.process_count() > 1 and sig == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self) -> bool:
        """Whether to stop here; every process calls it at the same points, in the same order."""
        if jax.process_count() == 1:
            return self.signal is not None
        self._checks += 1
        return multihost_utils.reached_preemption_sync_point(self._checks)

    @property
    def exit_code(self) -> ExitCode:
        """INTERRUPTED after a SIGINT, else PREEMPTED."""
        return ExitCode.INTERRUPTED if self.signal == signal.SIGINT else ExitCode.PREEMPTED

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

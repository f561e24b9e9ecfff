"""What a run prints: the plan before the first step, one progress line per log interval, eval
results, and the last line saying how it ended. Everything else is quiet by default.

Lines go to stdout from process 0 only. Library logs (TensorFlow's C++ INFO, tfds, orbax, absl
INFO) are silenced by `quiet_library_logs` unless the user asks for them (train.py's
`--verbosity`), so the story of a run is not buried.
"""

from __future__ import annotations

import logging
import os
import time

import jax
from absl import logging as absl_logging

# Libraries whose warnings (retries, deprecations, per-save notes) are noise in a run's story.
LIBRARY_PATHS = ("/tensorflow/", "/tensorflow_datasets/", "/orbax/", "/urllib3/", "/jax/", "/clu/")


class _LibraryNoise(logging.Filter):
    """Drops records below ERROR logged from inside the libraries of LIBRARY_PATHS."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(
            part in record.pathname for part in LIBRARY_PATHS
        )


def quiet_library_logs() -> None:
    """Only this system's own warnings, and errors, in the log; no progress bars. Call before
    TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().addFilter(_LibraryNoise())
    logging.getLogger().addFilter(_LibraryNoise())
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def say(text: str) -> None:
    """A line of the run's story (process 0 only)."""
    if jax.process_index() == 0:
        print(text, flush=True)


def duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(
    step: int, total: int, steps_per_epoch: int, values: dict[str, float], eta_s: float
) -> str:
    """`step 400/3905 (epoch 0.51)  loss 1.9871  top1 0.2913  lr 0.0512  247 img/s  ...`."""
    width = len(f"{total:,}")
    return (
        f"step {step:>{width},}/{total:,} (epoch {step / steps_per_epoch:.2f})"
        f"  loss {values['train/loss']:.4f}  top1 {values['train/top1']:.4f}"
        f"  lr {values['train/learning_rate']:.4g}"
        f"  {values['train/images_per_sec']:,.0f} img/s"
        f"  elapsed {duration(values['train/wall_s'])}  ETA {duration(eta_s)}"
    )


def eval_line(step: int, values: dict[str, float]) -> str:
    """`eval at step 400: loss 1.6218  top1 0.4102  top5 0.9011` (and the EMA weights')."""
    line = f"eval at step {step:,}:"
    for prefix, label in (("eval/", ""), ("eval/ema_", "  EMA")):
        if f"{prefix}loss" in values:
            line += (
                f"{label}  loss {values[f'{prefix}loss']:.4f}"
                f"  top1 {values[f'{prefix}top1']:.4f}  top5 {values[f'{prefix}top5']:.4f}"
            )
    return line


class EvalProgress:
    """A line every `every_s` seconds while an evaluation runs, so a long one is not silent."""

    def __init__(self, num_batches: int, every_s: float = 30.0):
        self.num_batches = num_batches
        self.every_s = every_s
        self.started = self.last = time.monotonic()

    def __call__(self, batches_done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            say(
                f"  evaluating: {batches_done}/{self.num_batches} batches"
                f" ({duration(now - self.started)})"
            )

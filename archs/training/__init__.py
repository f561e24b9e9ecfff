"""The training system: any registered model, any tfds image dataset, every device found.

`train_and_evaluate(config, workdir)` (loop.py) is what `train.py` runs and tests call; the
config keys are in config.py; models come only through the registry (`archs.create_model`).

The loop's names load on first use (PEP 562), so the step, optimizer and parallelism modules
(what `benchmarks/` needs on an accelerator machine) import without TensorFlow, tfds, clu or
orbax.
"""

import importlib
from typing import Any

from archs.cli_errors import ExitCode
from archs.training.config import base_config
from archs.training.errors import ConfigError, RunError

_LOOP_NAMES = (
    "COMPLETE",
    "EVALUATED",
    "EXIT_CODES",
    "INTERRUPTED",
    "PREEMPTED",
    "evaluate_only",
    "train_and_evaluate",
)

__all__ = ["ConfigError", "ExitCode", "RunError", "base_config", *_LOOP_NAMES]


def __getattr__(name: str) -> Any:
    if name in _LOOP_NAMES:
        return getattr(importlib.import_module("archs.training.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

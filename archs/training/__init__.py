"""The training system: any registered model, any tfds image dataset, every device found.

`train_and_evaluate(config, workdir)` (loop.py) is what `train.py` runs and tests call; the
config keys are in config.py; models come only through the registry (`archs.create_model`).
"""

from archs.training.config import ConfigError, RunError, base_config
from archs.training.loop import COMPLETE, EVALUATED, PREEMPTED, train_and_evaluate

__all__ = [
    "COMPLETE",
    "EVALUATED",
    "PREEMPTED",
    "ConfigError",
    "RunError",
    "base_config",
    "train_and_evaluate",
]

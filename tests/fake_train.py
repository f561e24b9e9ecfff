"""`train.py` under tfds mock data with the tests' tiny model registered, for tests that run the
real CLI in a subprocess (exit codes, signals, devices, processes):

    PYTHONPATH=. python tests/fake_train.py --config=configs/cifar10.py:tiny_test,fast ...

MOCK_DATA=0 reads real files instead; TINY_STEP_SLEEP / TINY_EVAL_SLEEP (seconds) slow each
train / eval batch, so that a test can act while a run is in a given phase.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from training_support import ROOT, mock_datasets


def _slow_down(cls: type, delay: float) -> None:
    """Sleep `delay` seconds before each batch `cls.batches` yields."""
    batches = cls.batches

    def slow_batches(self, *args):
        for batch in batches(self, *args):
            time.sleep(delay)
            yield batch

    cls.batches = slow_batches


def main() -> None:
    from absl import app

    sys.path.insert(0, str(ROOT))
    import train
    from archs.training import data

    for cls, variable in ((data.TrainData, "TINY_STEP_SLEEP"), (data.EvalData, "TINY_EVAL_SLEEP")):
        if os.environ.get(variable):
            _slow_down(cls, float(os.environ[variable]))
    # tfds's mock patches file access process-wide while a dataset is built, which a checkpoint
    # written meanwhile in another thread would go through: runs on real files go without it.
    mocked = os.environ.get("MOCK_DATA", "1") == "1"
    with mock_datasets() if mocked else contextlib.nullcontext():
        app.run(train.main, flags_parser=train._parse)


if __name__ == "__main__":
    main()

"""Fixtures shared by the training tests (the helpers themselves are in training_support.py)."""

import pytest


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    """An uninterrupted 20-step run of the tiny model, built once per test process."""
    from training_support import baseline_run

    return baseline_run(tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def module_flags():
    """absl flags defined while a test module runs (train.py's, sweep.py's) are removed after
    it, since absl allows one definition per name in a process."""
    from absl import flags

    before = set(flags.FLAGS)
    yield
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)

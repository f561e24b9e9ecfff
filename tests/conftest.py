"""Fixtures shared by the training tests (the helpers themselves are in training_support.py),
one XLA compilation cache for the whole test session, and the XLA flags the tests compile with."""

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The test processes, and the training subprocesses and notebook kernels they start, compile the
# same programs again and again (the tiny model's steps above all): one persistent cache, set
# before JAX is imported and inherited through the environment, compiles each once. Its keys
# hold the program, the devices and the XLA flags, so a hit is the same executable.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "archs-tests-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs are tiny: compiling them is most of their time, and XLA's backend
# (LLVM) optimisations most of that. They change how fast a program runs, never what it
# computes beyond float rounding, which every comparison here allows for or makes under the
# same flags on both sides.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The notebooks (nbmake) run in kernels, subprocesses of their own: the slow set's."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="module")
def repo_script(module_flags):
    """Load a repository script (train.py, sweep.py) as a module, once per test module: absl
    lets its flags be defined only once, and `module_flags` removes them afterwards."""
    from training_support import load_file

    loaded = {}

    def load(filename: str):
        if filename not in loaded:
            loaded[filename] = load_file(filename, f"{Path(filename).stem}_cli")
        return loaded[filename]

    return load


@pytest.fixture
def prepared_cifar10() -> str:
    """The tfds data dir holding a prepared CIFAR-10 (TFDS_DATA_DIR, else tfds's default);
    the test skips, saying so, where there is none: tfds cannot download it offline."""
    data_dir = os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))
    if not list(Path(data_dir).glob("cifar10/*/dataset_info.json")):
        pytest.skip(f"CIFAR-10 is not prepared in the tfds data dir {data_dir} (set TFDS_DATA_DIR)")
    return data_dir

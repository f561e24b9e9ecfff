"""What the training tests share: a tiny model, tfds mock data, configs, runs in process and
through the CLI, files loaded as modules.

Runs use `tfds.testing.mock_data` (random images, no files) and a tiny model registered here
only (never in the package). `cli` runs `fake_train.py`, which is `train.py` under the same mock
data and model, so tests can run the real CLI in subprocesses (exit codes, signals, devices,
processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import jax.numpy as jnp
import tensorflow_datasets as tfds
from flax import nnx

import archs
from archs import layers
from archs.classifier import Classifier
from archs.convolution import LAX, ConvImpl
from archs.registry import Preprocessing, register

ROOT = Path(__file__).resolve().parents[1]
MOCK_EXAMPLES = 40  # per split
TINY = "tiny_test"
FAKE_TRAIN = Path(__file__).with_name("fake_train.py")


class Tiny(Classifier):
    """conv-BN-ReLU, global pooling, dropout, linear: every kind of state a real net has
    (`norm=False` drops the BatchNorm, for checks that batch statistics would blur)."""

    def __init__(self, num_classes: int, rngs: nnx.Rngs, dtype, conv, width, drop_rate, norm):
        self.conv1 = layers.ConvNormAct(
            3,
            width,
            3,
            stride=2,
            norm=norm,
            dtype=dtype,
            conv_general_dilated=conv.outside_scan,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc = layers.linear(width, num_classes, dtype=dtype, rngs=rngs)

    def forward_features(self, x):
        stem = self.conv1(x)
        return {"stem": stem, "pre_logits": self.dropout(layers.global_avg_pool(stem))}

    def head(self, pre_logits):
        return self.fc(pre_logits)


def _tiny(
    *,
    num_classes,
    rngs,
    dtype=jnp.float32,
    conv: ConvImpl = LAX,
    width: int = 8,
    drop_rate: float = 0.1,
    norm: bool = True,
):
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return Tiny(num_classes, rngs, dtype, conv, width, drop_rate, norm)


if TINY not in archs.list_models():
    register(TINY, _tiny, family="test", preprocessing=Preprocessing(image_size=32, crop_pct=1.0))


@contextlib.contextmanager
def mock_datasets(num_examples: int = MOCK_EXAMPLES):
    """tfds mock data; mocked datasets report themselves unprepared, so say they are."""
    with (
        tfds.testing.mock_data(num_examples=num_examples),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        yield


def tiny_config(**overrides):
    from archs.training import base_config

    c = base_config()
    c.model = TINY
    c.dataset = "cifar10"
    c.data_dir = "/nonexistent/tfds"  # nothing is read from disk under mock data
    c.batch_size = 8
    c.num_train_steps = 12
    c.log_every_steps = 1
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 4
    c.keep_checkpoints = 2
    for key, value in overrides.items():
        c[key] = value
    return c


def run(workdir, **overrides):
    from archs.training import train_and_evaluate

    with mock_datasets():
        return train_and_evaluate(tiny_config(**overrides), str(workdir))


def lines(workdir):
    return [json.loads(s) for s in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_model(workdir):
    from archs.model_state import read_model_state

    return read_model_state(str(workdir))


def device_count_env(devices: int) -> dict[str, str]:
    """XLA_FLAGS giving a subprocess `devices` CPU devices, with the session's other flags."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return {"XLA_FLAGS": flags.strip()}


def cli(workdir, *overrides, config="configs/cifar10.py:tiny_test,fast", env=None, flags=(), **kw):
    """train.py (under mock data) in a subprocess: `--config.KEY=VALUE` overrides, other flags."""
    args = [sys.executable, str(FAKE_TRAIN), f"--config={config}", f"--workdir={workdir}"]
    args += [f"--config.{o}" for o in overrides] + list(flags)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        args, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


SMALL = (
    "num_train_steps=20",
    "batch_size=8",
    "log_every_steps=1",
    "eval_every_steps=10",
    "checkpoint_every_steps=5",
    "data_dir=/nonexistent/tfds",
)


def load_file(path: str | Path, name: str | None = None) -> ModuleType:
    """The Python file at `path` (relative to the repository) as a new module."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file (`get_config()` without `arg`)."""
    module = load_file(path)
    return module.get_config() if arg is None else module.get_config(arg)


def tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def small_config(**overrides):
    """The CLI's run (`configs/cifar10.py:tiny_test,fast` with SMALL), as a config object."""
    config = load_config("configs/cifar10.py", "tiny_test,fast")
    for override in SMALL:
        key, value = override.split("=")
        config[key] = type(config[key])(value)
    for key, value in overrides.items():
        config[key] = value
    return config


def baseline_run(workdir: Path) -> Path:
    """The uninterrupted run (in process) that resume and device-count tests compare with."""
    from archs.training import COMPLETE, train_and_evaluate

    with mock_datasets():
        assert train_and_evaluate(small_config(), str(workdir)) == COMPLETE
    return workdir

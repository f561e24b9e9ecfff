"""End to end: train, evaluate, checkpoint, SIGKILL + resume, eval_only, init_from, bad input.

Runs on `tfds.testing.mock_data` (random images, no files) with a tiny model registered here
only (never in the package). Run as a script, this file is `train.py` under the same mock data
and model, so the tests can run the real CLI in subprocesses (exit codes, SIGKILL, 8 devices):

    PYTHONPATH=. python tests/test_training_e2e.py --config=configs/cifar10.py:tiny_test,fast ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import archs
from archs import layers
from archs.classifier import Classifier
from archs.registry import register

ROOT = Path(__file__).resolve().parents[1]
MOCK_EXAMPLES = 40  # per split
TINY = "tiny_test"


class Tiny(Classifier):
    """conv-BN-ReLU, global pooling, dropout, linear: every kind of state a real net has."""

    def __init__(self, num_classes: int, rngs: nnx.Rngs, dtype, width: int, drop_rate: float):
        self.conv1 = layers.ConvNormAct(3, width, 3, stride=2, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc = layers.linear(width, num_classes, dtype=dtype, rngs=rngs)

    def forward_features(self, x):
        stem = self.conv1(x)
        return {"stem": stem, "pre_logits": self.dropout(layers.global_avg_pool(stem))}

    def head(self, pre_logits):
        return self.fc(pre_logits)


def _tiny(*, num_classes, rngs, dtype=jnp.float32, width: int = 8, drop_rate: float = 0.1):
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return Tiny(num_classes, rngs, dtype, width, drop_rate)


if TINY not in archs.list_models():
    register(TINY, _tiny, family="test", image_size=32, crop_pct=1.0)


@contextlib.contextmanager
def mock_datasets():
    """tfds mock data; mocked datasets report themselves unprepared, so say they are."""
    with (
        tfds.testing.mock_data(num_examples=MOCK_EXAMPLES),
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
    from archs.training.checkpoint import read_model_state

    return read_model_state(str(workdir))


def cli(workdir, *overrides, config="configs/cifar10.py:tiny_test,fast", env=None, **kw):
    args = [sys.executable, __file__, f"--config={config}", f"--workdir={workdir}"]
    args += [f"--config.{o}" for o in overrides]
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


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run (in process) of the run the SIGKILL test interrupts."""
    workdir = tmp_path_factory.mktemp("baseline")
    overrides = dict(o.split("=") for o in SMALL)
    from archs.training import COMPLETE, base_config

    cfg = {k: type(base_config()[k])(v) for k, v in overrides.items()}
    cifar = _load_config("configs/cifar10.py", "tiny_test,fast")
    for k, v in cfg.items():
        cifar[k] = v
    from archs.training import train_and_evaluate

    with mock_datasets():
        assert train_and_evaluate(cifar, str(workdir)) == COMPLETE
    return workdir


def _load_config(path, arg):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_run_writes_the_contracted_files(baseline):
    names = {p.name for p in baseline.iterdir()}
    assert {"config.json", "provenance.json", "metrics.jsonl", "done.json", "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    records = lines(baseline)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert [r["step"] for r in evals] == [10, 20]
    for r in train:
        assert set(r) == {
            "step",
            "train/loss",
            "train/top1",
            "train/learning_rate",
            "train/images_per_sec",
            "train/wall_s",
        }
        assert 0.0 <= r["train/top1"] <= 1.0
    assert all(set(r) == {"step", "eval/loss", "eval/top1", "eval/top5"} for r in evals)
    done = json.loads((baseline / "done.json").read_text())
    assert done["step"] == 20 and done["eval/top1"] == evals[-1]["eval/top1"]
    prov = json.loads((baseline / "provenance.json").read_text())
    assert prov["device_count"] >= 1 and "jax" in prov["packages"]
    # last 2 kept (15, 20) plus the best by eval top-1 (10 or 20).
    kept = sorted(int(p.name) for p in (baseline / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-2:] == [15, 20] and len(kept) <= 3


def test_sigkill_and_resume_is_bitwise_exact(baseline, tmp_path):
    proc = cli(tmp_path, *SMALL, env={"TINY_STEP_SLEEP": "0.15"})
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [p for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and proc.poll() is None:
            time.sleep(0.3)  # somewhere past the first checkpoint
            break
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(r["step"]) for r in lines(tmp_path))
    assert killed_at < 20, "the run finished before it was killed"
    resumed = cli(tmp_path, *SMALL)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    a, b = final_model(baseline), final_model(tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ours, theirs = lines(tmp_path), lines(baseline)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]  # each step once
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/top1", "train/learning_rate", "eval/loss", "eval/top1"):
            assert x.get(key) == y.get(key), (x["step"], key)


def test_same_seed_same_losses_other_seed_differs(baseline, tmp_path):
    def losses(records):
        return [r["train/loss"] for r in records if "train/loss" in r]

    cifar = _load_config("configs/cifar10.py", "tiny_test,fast")
    for o in SMALL:
        k, v = o.split("=")
        cifar[k] = type(cifar[k])(v)
    cifar.num_train_steps = 10
    cifar.seed = 1
    from archs.training import train_and_evaluate

    with mock_datasets():
        train_and_evaluate(cifar, str(tmp_path))
    other = losses(lines(tmp_path))
    same = losses(lines(baseline))[:10]
    assert len(other) == 10 and other != same
    # Same seed: the SIGKILL test compares every step's loss with this baseline bit for bit.


def test_eval_only_rewrites_the_eval_line_of_the_checkpoint(baseline, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(baseline, workdir)
    before = lines(workdir)
    from archs.training import EVALUATED

    assert run(workdir, eval_only=True) == EVALUATED
    after = lines(workdir)
    assert len(after) == len(before)
    assert [r for r in after if r["step"] == 20 and "eval/top1" in r] == [
        r for r in before if r["step"] == 20 and "eval/top1" in r
    ]


def test_init_from_takes_the_body_and_a_fresh_head(baseline, tmp_path):
    from archs.training import COMPLETE

    assert run(tmp_path, init_from=str(baseline), num_classes=5, num_train_steps=1) == COMPLETE
    source = final_model(baseline)
    # Step 0 is never saved; one step of lr 0.1 moves the body a little, and the head is new.
    tuned = final_model(tmp_path)
    assert tuned["fc/kernel"].shape == (8, 5) != source["fc/kernel"].shape
    np.testing.assert_allclose(tuned["conv1/conv/kernel"], source["conv1/conv/kernel"], atol=0.05)


def test_stream_pipeline_with_variable_size_images_and_ten_crop(tmp_path):
    from archs.training import COMPLETE

    status = run(
        tmp_path,
        dataset="imagenet2012",
        eval_split="validation",
        data_pipeline="stream",
        augment="inception",
        pca_lighting=0.1,
        eval_protocol="ten_crop",
        num_train_steps=4,
        eval_every_steps=4,
        shuffle_buffer=16,
    )
    assert status == COMPLETE
    evals = [r for r in lines(tmp_path) if "eval/top1" in r]
    assert [r["step"] for r in evals] == [4] and 0.0 <= evals[0]["eval/top5"] <= 1.0


def _tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "resnet_nonexistent"}, "unknown model"),
        ({"dataset": "cifar_ten"}, "unknown dataset"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"learning_rate": -0.1}, "learning_rate must be positive"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
        ({"model_kwargs": {"width": 0}}, "width must be >= 1"),
        ({"model_kwargs": {"depth": 3}}, "unknown override"),
        ({"model": "tiny_other"}, "holds a run with model="),
        ({"dataset": "cifar100"}, "holds a run with dataset="),
        ({"eval_only": True, "init_from": "/nonexistent"}, "does not exist"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(baseline, tmp_path, overrides, message):
    import ml_collections

    from archs.training import ConfigError

    if "tiny_other" in overrides.values() and "tiny_other" not in archs.list_models():
        register("tiny_other", _tiny, family="test", image_size=32, crop_pct=1.0)
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = ml_collections.ConfigDict(overrides["model_kwargs"])
    before = _tree_digest(baseline)
    with pytest.raises(ConfigError, match=message):
        run(baseline, **overrides)
    assert _tree_digest(baseline) == before


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    from archs.training import ConfigError, train_and_evaluate

    with pytest.raises(ConfigError, match="TFDS_DATA_DIR"):
        train_and_evaluate(tiny_config(data_dir=str(tmp_path / "empty")), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_batch_not_divisible_by_devices_is_refused(tmp_path):
    from archs.training import ConfigError

    with (
        mock.patch("jax.device_count", return_value=8),
        pytest.raises(ConfigError, match=r"batch_size=12 is not divisible .* devices \(8\)"),
    ):
        run(tmp_path, batch_size=12)
    assert not tmp_path.joinpath("config.json").exists()


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    cases = [
        ("--config.no_such_key=1",),
        ("--config.batch_size=-8",),
    ]
    for extra in cases:
        args = [sys.executable, "train.py", "--config=configs/cifar10.py:resnet20"]
        args += [f"--workdir={tmp_path / 'w'}", *extra]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        error_lines = [s for s in done.stderr.splitlines() if s.startswith("train.py: error:")]
        assert len(error_lines) == 1, done.stderr[-2000:]
    assert not (tmp_path / "w" / "config.json").exists()


def test_eight_devices_match_one_device(baseline, tmp_path):
    """Sync BatchNorm over the global batch: 8 devices compute what 1 device does."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = cli(tmp_path / "w", *SMALL, env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads((tmp_path / "w" / "provenance.json").read_text())["device_count"] == 8
    ours, theirs = lines(tmp_path / "w"), lines(baseline)
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "eval/loss", "eval/top1"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=2e-3, err_msg=f"{key} {x['step']}")


def _main() -> None:
    """train.py under mock data with the tiny model (TINY_STEP_SLEEP slows each batch)."""
    from absl import app

    sys.path.insert(0, str(ROOT))
    import train
    from archs.training import data

    delay = float(os.environ.get("TINY_STEP_SLEEP", "0"))
    if delay:
        batch_at = data.TrainData.batch_at

        def slow_batch_at(self, step):
            time.sleep(delay)
            return batch_at(self, step)

        data.TrainData.batch_at = slow_batch_at
    with mock_datasets():
        app.run(train.main, flags_parser=train._parse)


if __name__ == "__main__":
    _main()

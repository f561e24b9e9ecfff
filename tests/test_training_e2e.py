"""End to end: train, evaluate, checkpoint, eval_only, init_from, data errors.

The shared tiny model, mock data and CLI runner are in training_support.py; `baseline` (an
uninterrupted 20-step run) is in conftest.py. Device counts, processes, faults (SIGKILL and
SIGTERM with resume among them) and the bad-input catalogue are in test_scale_faults.py.
"""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
from training_support import (
    SMALL,
    TINY,
    final_model,
    lines,
    load_config,
    mock_datasets,
    run,
    tiny_config,
)


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
    best = max(evals, key=lambda r: r["eval/top1"])
    assert (done["best_step"], done["best_eval/top1"]) == (best["step"], best["eval/top1"])
    assert done["best_checkpoint"] == str(baseline / "checkpoints" / str(best["step"]))
    (launch,) = json.loads((baseline / "provenance.json").read_text())["launches"]
    assert launch["device_count"] >= 1 and "jax" in launch["packages"]
    assert launch["exit_status"] == 0
    assert not (baseline / "lock.json").exists()
    # last 2 kept (15, 20) plus the best by eval top-1 (10 or 20).
    kept = sorted(int(p.name) for p in (baseline / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-2:] == [15, 20] and len(kept) <= 3


def test_same_seed_same_losses_other_seed_differs(baseline, tmp_path):
    def losses(records):
        return [r["train/loss"] for r in records if "train/loss" in r]

    cifar = load_config("configs/cifar10.py", "tiny_test,fast")
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
    """The state a run starts from holds init_from's body exactly and a freshly initialised
    head (another num_classes), read before any step."""
    from flax import nnx

    import archs
    from archs.model_state import flat_state
    from archs.training import EVALUATED, steps

    with mock.patch.object(steps, "init_state", wraps=steps.init_state) as init_state:
        status = run(tmp_path, init_from=str(baseline), num_classes=5, eval_only=True)
    assert status == EVALUATED
    params, model_state = init_state.call_args.args[:2]
    start = {**flat_state(params), **flat_state(model_state)}
    source = final_model(baseline)
    fresh = archs.create_model(TINY, num_classes=5, rngs=nnx.Rngs(0))
    fresh_state = flat_state(nnx.state(fresh, nnx.Not(nnx.RngState)))
    head = {"fc/kernel", "fc/bias"}
    assert start.keys() == source.keys() == fresh_state.keys()
    for key in start.keys() - head:
        np.testing.assert_array_equal(start[key], source[key], err_msg=key)
    assert start["fc/kernel"].shape == (8, 5) != source["fc/kernel"].shape
    for key in head:
        np.testing.assert_array_equal(start[key], fresh_state[key], err_msg=key)
    assert not np.array_equal(start["conv1/conv/kernel"], fresh_state["conv1/conv/kernel"])


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

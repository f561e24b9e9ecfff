"""What a model is fed: evaluation sees the view training saw, and each dataset is normalised
with its own constants (known, computed once, or kept from a run's first launch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from training_support import mock_datasets, tiny_config

from archs.training import data, normalization
from archs.training.plan import plan_run


def _info(crop_pct: float):
    return type("Info", (), {"image_size": 32, "crop_pct": crop_pct})()


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_memory_pipeline_evaluates_the_frame_it_trained_on(crop_pct):
    with mock_datasets():
        config = tiny_config(train_split="test", eval_split="test")
        source = data.open_source(config)
        preprocess = data.make_preprocess(config, _info(crop_pct), source)
        train = data.TrainData(source, 8, 0, preprocess, 8)
        evaluation = data.EvalData(source, 8, preprocess)
    assert source.pipeline == "memory"
    np.testing.assert_array_equal(train._arrays[0], evaluation._arrays[0])


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_stream_pipeline_evaluates_the_view_it_trained_on(crop_pct, augment):
    """Unaugmented (and CIFAR's augmentation without padding, up to its flip), the training
    view of an image of any size is the 'center' evaluation view."""
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (40, 50, 3)), tf.uint8)
    config = tiny_config(augment=augment, crop_padding=0)
    preprocess = data.make_preprocess(config, _info(crop_pct), type("S", (), {"pipeline": "x"}))
    seed = tf.constant([1, 2], tf.int64)
    trained = data.train_transform(image, seed, preprocess).numpy()
    evaluated = data.eval_views(image, preprocess).numpy()
    assert trained.shape == evaluated.shape == (32, 32, 3)
    assert np.array_equal(trained, evaluated) or np.array_equal(trained, evaluated[:, ::-1])


def test_each_known_dataset_brings_its_own_constants(tmp_path):
    with mock_datasets():
        plan = plan_run(tiny_config(dataset="cifar100"), str(tmp_path / "w"))
    (mean, std), _ = normalization.known_stats("cifar100")
    assert (tuple(plan.config.input_mean), tuple(plan.config.input_std)) == (mean, std)
    assert mean != normalization.known_stats("cifar10")[0][0]
    assert normalization.known_stats("imagenette/320px-v2:1.0.0")[0] == normalization.IMAGENET


def _write_folder(root, colours_per_split):
    """An image folder of flat-coloured 40x30 PNGs: root/split/class/i.png."""
    for split, colours in colours_per_split.items():
        for i, colour in enumerate(colours):
            directory = root / split / f"class{i % 2}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), colour).save(directory / f"{i}.png")


def test_other_datasets_get_constants_computed_once_and_kept_on_resume(tmp_path):
    # Half black, half white: mean 0.5 and std 0.5 in every channel, at any resize.
    _write_folder(
        tmp_path / "images", {"train": [(0, 0, 0), (255, 255, 255)] * 4, "test": [(0,) * 3] * 2}
    )
    config = tiny_config(dataset=f"folder:{tmp_path / 'images'}", data_pipeline="stream")
    plan = plan_run(config, str(tmp_path / "w"))
    assert plan.config.input_mean == (0.5, 0.5, 0.5) and plan.config.input_std == (0.5, 0.5, 0.5)
    assert plan.normalization == "computed from train"
    # A resumed run reads the constants its first launch recorded in config.json.
    (tmp_path / "w").mkdir()
    recorded = {**plan.config.to_dict(), "input_mean": [0.25] * 3, "input_std": [0.75] * 3}
    (tmp_path / "w" / "config.json").write_text(json.dumps(recorded))
    resumed = plan_run(config, str(tmp_path / "w"))
    assert (resumed.config.input_mean, resumed.normalization) == ((0.25,) * 3, "as first launched")
    assert resumed.changed == ()

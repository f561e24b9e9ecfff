"""The ImageNet-style input pipelines on small generated JPEGs: tf.data decoding whole images or
only the crop windows, and NVIDIA DALI (`data_pipeline=dali`; its tests skip, saying so, where
DALI is not installed). Each reads an image folder and a tfds-prepared dataset (TFRecord files)
written here, since tfds's mock data has no files.

Tolerances, from measurements on these images (32x32 crops of 40x56 JPEGs; the bounds hold with
a margin over the measured worst case, shown in brackets):
- window decode vs whole-image decode (tf.data): the same windows; pixels differ only in each
  window's first and last columns, where libjpeg's chroma upsampling at the cut changes:
  max 10 levels [7], mean over a batch 0.1 [0.04].
- DALI vs tf.data: the same windows, resizes, crops and flips; DALI's JPEG decoder gives
  pixels that differ from TensorFlow's by up to 4 levels (mean about 1), so training images
  differ by max 12 [9], mean 1.5 [1.08], and 'center' eval views by max 6 [4], mean 1.5 [0.99].
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from training_support import (
    ROOT,
    SMALL,
    cli,
    device_count_env,
    final_model,
    lines,
    small_config,
    tiny_config,
)

from archs.training import dali, data
from archs.training.errors import ConfigError
from benchmarks.input_pipeline import synthetic_jpeg_folder

needs_dali = pytest.mark.skipif(
    dali.nvdali is None, reason=f"NVIDIA DALI is not installed ({dali.INSTALL})"
)
TRAIN, TEST, BATCH = 40, 13, 8  # 13 eval examples: the last batch is padded


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """`folder:ROOT`: JPEGs in train/ (40x56 and 56x40) and test/ (48x36 and 36x48)."""
    root = str(tmp_path_factory.mktemp("jpegs"))
    synthetic_jpeg_folder(root, TRAIN, classes=3, size=(40, 56))
    synthetic_jpeg_folder(root, TEST, classes=3, split="test", size=(48, 36))
    return "folder:" + root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    """The data_dir of `tiny_jpegs`, a tfds dataset (TFRecord files) of varied-size JPEGs."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)

    def split(count: int) -> tf.data.Dataset:
        def examples():
            for i in range(count):
                shape = (40 + 8 * (i % 3), 56 - 8 * (i % 2), 3)
                yield {"image": rng.integers(0, 256, shape, np.uint8), "label": i % 3}

        spec = {
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "label": tf.TensorSpec((), tf.int64),
        }
        return tf.data.Dataset.from_generator(examples, output_signature=spec)

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_jpegs",
        version="1.0.0",
        features=features,
        split_datasets={"train": split(TRAIN), "test": split(TEST)},
        data_dir=data_dir,
    )
    return data_dir


INFO = type("Info", (), {"image_size": 32, "crop_pct": 0.875})()
STREAM = type("Source", (), {"pipeline": "stream"})()


def _config(dataset: str, **overrides):
    overrides = {"augment": "inception", "eval_split": "test", **overrides}
    if dataset.startswith("folder:"):
        return tiny_config(dataset=dataset, **overrides)
    return tiny_config(dataset="tiny_jpegs", data_dir=dataset, **overrides)


def _train(
    dataset: str, pipeline: str, seed: int = 0, roi: bool = True, sharding=None, **overrides
) -> data.TrainData:
    config = _config(dataset, data_pipeline=pipeline, **overrides)
    source = data.open_source(config)
    preprocess = dataclasses.replace(data.make_preprocess(config, INFO, source), roi_decode=roi)
    return data.TrainData(source, BATCH, seed, preprocess, 64, sharding)


def _eval(dataset: str, pipeline: str, sharding=None, **overrides) -> list[dict]:
    config = _config(dataset, data_pipeline=pipeline, **overrides)
    source = data.open_source(config)
    preprocess = data.make_preprocess(config, INFO, source)
    return list(data.EvalData(source, BATCH, preprocess, sharding).batches())


def _take(train: data.TrainData, start: int, count: int) -> list[dict]:
    batches = train.batches(start)
    return [next(batches) for _ in range(count)]


def _assert_close(ours: np.ndarray, theirs: np.ndarray, max_diff: int, mean_diff: float) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())


# ----- tf.data: decode only the crop window ------------------------------------------------


def test_window_decode_crops_the_same_windows_as_whole_image_decode(folder):
    windows, whole = _train(folder, "stream"), _train(folder, "stream", roi=False)
    differs = False
    for ours, theirs in zip(_take(windows, 0, 5), _take(whole, 0, 5), strict=True):
        np.testing.assert_array_equal(ours["label"], theirs["label"])
        _assert_close(ours["image"], theirs["image"], 10, 0.1)
        differs |= not np.array_equal(ours["image"], theirs["image"])
    assert differs  # the windows really were decoded on their own


def test_window_decode_of_a_png_is_the_whole_image_path():
    p = data.make_preprocess(tiny_config(augment="inception"), INFO, STREAM)
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8))
    png, seed = tf.io.encode_png(image), tf.constant([1, 2], tf.int64)
    whole = data.train_transform(image, seed, dataclasses.replace(p, roi_decode=False))
    np.testing.assert_array_equal(data.train_transform(png, seed, p), whole)


@pytest.mark.parametrize("source", ["folder", "prepared"])
def test_stream_order_is_a_pure_function_of_seed_and_step(source, request):
    """Image folders included: tfds.ImageFolder shuffles its files without a seed."""
    dataset = request.getfixturevalue(source)
    steps = TRAIN // BATCH
    first = _take(_train(dataset, "stream"), 0, steps + 2)
    again = _take(_train(dataset, "stream"), steps - 1, 3)  # crosses an epoch boundary
    for ours, theirs in zip(again, first[-3:], strict=True):
        np.testing.assert_array_equal(ours["image"], theirs["image"])
        np.testing.assert_array_equal(ours["label"], theirs["label"])
    epoch = np.concatenate([b["label"] for b in first[:steps]])
    assert sorted(epoch) == sorted(np.arange(TRAIN) % 3)


# ----- DALI ----------------------------------------------------------------------------------


def test_dali_without_dali_is_a_config_error_naming_the_extra(folder):
    with (
        mock.patch.object(dali, "nvdali", None),
        pytest.raises(ConfigError, match=r"needs NVIDIA DALI: pip install -e \"\.\[dali\]\""),
    ):
        data.open_source(_config(folder, data_pipeline="dali"))


def test_dali_refuses_the_cifar_augmentation(folder):
    with (
        mock.patch.object(dali, "nvdali", object()),  # as if installed
        pytest.raises(ConfigError, match=r"runs augment inception, .* not 'cifar'"),
    ):
        data.open_source(_config(folder, data_pipeline="dali", augment="cifar"))


@needs_dali
@pytest.mark.parametrize(
    "overrides",
    [
        {"augment": "inception"},
        {"augment": "inception", "pca_lighting": 0.1},
        {"augment": "scale_jitter", "scale_jitter": (36, 48)},
        {"augment": "flip"},
    ],
    ids=["inception", "pca_lighting", "scale_jitter", "flip"],
)
def test_dali_train_batches_are_tf_datas_decoded_by_dali(folder, overrides):
    ours = _take(_train(folder, "dali", **overrides), 0, 3)
    theirs = _take(_train(folder, "stream", **overrides), 0, 3)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        _assert_close(a["image"], b["image"], 12, 1.5)
    again = _take(_train(folder, "dali", **overrides), 0, 3)
    for a, b in zip(ours, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = _take(_train(folder, "dali", seed=1, **overrides), 0, 1)
    assert not np.array_equal(ours[0]["image"], other[0]["image"])


@needs_dali
@pytest.mark.parametrize("source", ["folder", "prepared"])
def test_dali_resume_sees_the_same_batches(source, request):
    dataset = request.getfixturevalue(source)
    steps = TRAIN // BATCH
    first = _take(_train(dataset, "dali"), 0, steps + 2)
    again = _take(_train(dataset, "dali"), steps - 1, 3)  # crosses an epoch boundary
    for ours, theirs in zip(again, first[-3:], strict=True):
        np.testing.assert_array_equal(ours["image"], theirs["image"])
        np.testing.assert_array_equal(ours["label"], theirs["label"])


@needs_dali
@pytest.mark.parametrize("source", ["folder", "prepared"])
def test_dali_eval_sees_every_example_once_as_tf_data_does(source, request):
    dataset = request.getfixturevalue(source)
    ours, theirs = _eval(dataset, "dali"), _eval(dataset, "stream")
    assert len(ours) == len(theirs) == 2
    mask = np.concatenate([b["mask"] for b in ours])
    assert mask.sum() == TEST and not mask[TEST:].any()
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a["label"][a["mask"]], b["label"][b["mask"]])
        _assert_close(a["image"][a["mask"]], b["image"][b["mask"]], 6, 1.5)


@needs_dali
def test_dali_evaluates_other_protocols_through_tf_data(folder):
    ours, theirs = (
        _eval(folder, "dali", eval_protocol="ten_crop"),
        _eval(folder, "stream", eval_protocol="ten_crop"),
    )
    assert ours[0]["image"].shape == (BATCH, 10, 32, 32, 3)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


SHARDED = """
import sys
import numpy as np
from archs.training import parallel
from test_input_pipelines import BATCH, TEST, _eval, _take, _train

folder = sys.argv[1]
mesh = parallel.make_mesh()
sharding = parallel.batch_sharded(mesh)
host, placed = _train(folder, "dali"), _train(folder, "dali", sharding=sharding)
assert len(placed._decoder.pipelines) == 8
for ours, theirs in zip(_take(placed, 3, 3), _take(host, 3, 3), strict=True):
    assert parallel.global_batch(ours, mesh) is ours
    for key, value in parallel.global_batch(theirs, mesh).items():
        assert ours[key].sharding == sharding, key
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(value), err_msg=key)
batches = _eval(folder, "dali", sharding)
assert sum(int(np.asarray(b["mask"]).sum()) for b in batches) == TEST
print(len(batches), "eval batches")
"""


@needs_dali
@pytest.mark.slow
def test_dali_makes_each_devices_rows_over_eight_devices(folder):
    """Given the batch sharding, one DALI pipeline per device: its rows, on it, as the host
    batch placed by `parallel.global_batch` would be."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        **device_count_env(8),
    }
    done = subprocess.run(
        [sys.executable, "-c", SHARDED, folder],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 eval batches" in done.stdout


REAL_FILES = {"MOCK_DATA": "0"}


def _dali_run(folder: str) -> tuple[str, ...]:
    return (f"dataset={folder}", "data_pipeline=dali", "augment=inception", "eval_split=test")


@pytest.fixture(scope="module")
def dali_baseline(folder, tmp_path_factory):
    """An uninterrupted 20-step run of the tiny model on DALI batches (in process)."""
    from archs.training import COMPLETE, train_and_evaluate

    workdir = tmp_path_factory.mktemp("dali_baseline")
    overrides = dict(o.split("=", 1) for o in _dali_run(folder))
    assert train_and_evaluate(small_config(**overrides), str(workdir)) == COMPLETE
    return workdir


@needs_dali
@pytest.mark.slow
def test_dali_sigkill_and_resume_is_bitwise_exact(folder, dali_baseline, tmp_path):
    env = {**REAL_FILES, "TINY_STEP_SLEEP": "0.15"}
    proc = cli(tmp_path, *SMALL, *_dali_run(folder), env=env)
    deadline = time.time() + 180
    while not any(p.name.isdigit() for p in tmp_path.glob("checkpoints/*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    time.sleep(0.3)  # somewhere past the first checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in lines(tmp_path)) < 20, "the run finished before it was killed"
    resumed = cli(tmp_path, *SMALL, *_dali_run(folder), env=REAL_FILES)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    a, b = final_model(dali_baseline), final_model(tmp_path)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ours, theirs = lines(tmp_path), lines(dali_baseline)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/top1", "eval/loss", "eval/top1"):
            assert x.get(key) == y.get(key), (x["step"], key)


@needs_dali
@pytest.mark.slow
def test_dali_run_on_eight_devices_matches_one_device(folder, dali_baseline, tmp_path):
    env = {**REAL_FILES, **device_count_env(8)}
    proc = cli(tmp_path, *SMALL, *_dali_run(folder), env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    (launch,) = json.loads((tmp_path / "provenance.json").read_text())["launches"]
    assert launch["device_count"] == 8
    ours, theirs = lines(tmp_path), lines(dali_baseline)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "eval/loss"):
            if key in x:  # the same float32 arithmetic, reduced in another order
                np.testing.assert_allclose(x[key], y[key], rtol=1e-4, err_msg=f"{key} {x['step']}")

"""The training system's parts, one at a time: schedules, decay, loss, data order, views, configs.

Reference numbers: He et al. 2016 (CIFAR: lr 0.1, /10 at 32k and 48k of 64k iterations,
weight decay 1e-4, batch 128); Goyal et al. 2017 (lr 0.1 per 256 images, linear scaling).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from training_support import MOCK_EXAMPLES, mock_datasets, tiny_config

from archs.training import base_config, data, optim, steps
from archs.training.config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]


def load_config(path: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_he_cifar_step_schedule():
    c = load_config("configs/cifar10.py")
    assert (c.model, c.batch_size, c.num_train_steps, c.weight_decay) == (
        "resnet20",
        128,
        64000,
        1e-4,
    )
    lr = optim.learning_rate_schedule(c, steps_per_epoch=390, total_steps=c.num_train_steps)
    np.testing.assert_allclose(
        [lr(0), lr(31_999), lr(32_000), lr(47_999), lr(48_000), lr(63_999)],
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
        rtol=1e-6,
    )


def test_warmup_then_cosine_and_linear_scaling():
    c = base_config()
    c.update(schedule="cosine", warmup_epochs=2, batch_size=1024, lr_base_batch_size=256)
    lr = optim.learning_rate_schedule(c, steps_per_epoch=10, total_steps=100)
    assert optim.peak_learning_rate(c) == pytest.approx(0.4)
    np.testing.assert_allclose(
        [lr(0), lr(10), lr(20), lr(60), lr(100)], [0, 0.2, 0.4, 0.2, 0], atol=1e-6
    )


def test_sgd_weight_decay_is_coupled_and_can_skip_norm_and_bias():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    for exclude, bias_after in ((False, 1 - 0.1 * 0.5), (True, 1.0)):
        c = base_config()
        c.update(
            learning_rate=0.1,
            weight_decay=0.5,
            momentum=0.9,
            weight_decay_exclude_norm_bias=exclude,
        )
        tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 1, 10))
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)  # p - lr * wd * p
        np.testing.assert_allclose(new["bias"], bias_after)


def test_label_smoothed_cross_entropy_matches_hand_computation():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    log_p = jax.nn.log_softmax(logits)[0]
    expected = -(0.9 + 0.1 / 3) * log_p[0] - (0.1 / 3) * (log_p[1] + log_p[2])
    assert steps.cross_entropy(logits, jnp.array([0]), 0.1)[0] == pytest.approx(float(expected))


def test_pad_crop_flip_moves_pixels_and_is_keyed():
    images = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.uint8).reshape(2, 4, 4, 3) + 1
    cifar = steps.device_augment("cifar", 2)
    a = steps.augment_batch(cifar, images, jax.random.key(0), 0)
    b = steps.augment_batch(cifar, images, jax.random.key(0), 0)
    assert a.shape == images.shape and jnp.array_equal(a, b)
    outs = [steps.augment_batch(cifar, images, jax.random.key(k), 0) for k in range(8)]
    assert any(not jnp.array_equal(o, images) for o in outs)
    assert any(bool(jnp.any(o == 0)) for o in outs)  # zero padding shows in some crops


def test_augmentation_of_an_example_does_not_depend_on_the_batch_split():
    images = jax.random.randint(jax.random.key(1), (8, 6, 6, 3), 1, 255).astype(jnp.uint8)
    cifar, key = steps.device_augment("cifar", 2), jax.random.key(3)
    whole = steps.augment_batch(cifar, images, key, 0)
    halves = [steps.augment_batch(cifar, images[i : i + 4], key, i) for i in (0, 4)]
    assert jnp.array_equal(whole, jnp.concatenate(halves))
    assert not jnp.array_equal(whole[4:], steps.augment_batch(cifar, images[4:], key, 0))


def _preprocess(**kw):
    c = tiny_config(**kw)
    info = type("Info", (), {"image_size": 32, "crop_pct": 1.0})()
    return data.make_preprocess(c, info, type("Source", (), {"pipeline": "stream"})())


def test_memory_order_is_a_pure_function_of_seed_and_step():
    with mock_datasets():
        source = data.open_source(tiny_config())
        p = _preprocess()
        a = data.TrainData(source, 8, seed=0, preprocess=p, buffer=16)
        b = data.TrainData(source, 8, seed=0, preprocess=p, buffer=16)
        other = data.TrainData(source, 8, seed=1, preprocess=p, buffer=16)
    assert a.steps_per_epoch == MOCK_EXAMPLES // 8
    for step in (0, 3, 7):
        np.testing.assert_array_equal(a.batch_at(step)["image"], b.batch_at(step)["image"])
    assert not np.array_equal(a.batch_at(0)["image"], other.batch_at(0)["image"])
    epoch = np.concatenate([a._permutation(0)[: a.steps_per_epoch * 8]])
    assert sorted(epoch) == list(range(MOCK_EXAMPLES))
    assert not np.array_equal(a._permutation(0), a._permutation(1))


def test_stream_resume_sees_the_same_batches():
    with mock_datasets():
        c = tiny_config(dataset="imagenet2012", data_pipeline="stream", augment="inception")
        source = data.open_source(c)
        train = data.TrainData(
            source, 4, seed=0, preprocess=_preprocess(augment="inception"), buffer=8
        )
        it = train.batches(0)
        from_start = [next(it) for _ in range(train.steps_per_epoch + 2)]
        resumed = train.batches(train.steps_per_epoch - 1)  # crosses an epoch boundary
        for expected in from_start[-3:]:
            got = next(resumed)
            np.testing.assert_array_equal(got["image"], expected["image"])
            np.testing.assert_array_equal(got["label"], expected["label"])
    assert from_start[0]["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_eval_covers_every_example_once(pipeline):
    with mock_datasets():
        source = data.open_source(tiny_config(data_pipeline=pipeline))
        evaluation = data.EvalData(source, 16, _preprocess())
        batches = list(evaluation.batches())
        import tensorflow_datasets as tfds

        reference = [ex["label"] for ex in tfds.as_numpy(source.builder.as_dataset(split="test"))]
    assert len(batches) == 3 and all(b["image"].shape[0] == 16 for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == MOCK_EXAMPLES and not mask[MOCK_EXAMPLES:].any()
    np.testing.assert_array_equal(labels[:MOCK_EXAMPLES], reference)


def test_eval_view_protocols():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (40, 50, 3)), tf.uint8)
    p = _preprocess()
    center = data.eval_views(image, p)
    assert center.shape == (32, 32, 3)
    p_ten = _preprocess(eval_protocol="ten_crop")
    ten = data.eval_views(image, p_ten)
    assert ten.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(ten[4], center)
    np.testing.assert_array_equal(ten[9], center[:, ::-1])
    multi = data.eval_views(image, _preprocess(eval_protocol="multi_scale", eval_scales=(32, 40)))
    assert multi.shape == (4, 32, 32, 3)


def test_every_recipe_is_a_valid_config():
    args = {
        "configs/cifar10.py": [
            None,
            "resnet56",
            "resnet20,fast",
            "densenet_bc_100_12",
            "resnext29_8x64d",
        ],
        "configs/cifar100.py": [None],
        "configs/imagenet.py": [
            None,
            "alexnet_lrn",
            "vgg16",
            "densenet121",
            "seresnet50",
            "googlenet",
            "resnet50,goyal",
            "resnet50,lars",
        ],
        "configs/imagenette.py": [None],
        "configs/finetune.py": [None],
    }
    for path, variants in args.items():
        for arg in variants:
            check_config(load_config(path, arg))
    assert load_config("configs/cifar10.py", "densenet_bc_100_12").nesterov
    assert load_config("configs/imagenet.py", "alexnet").learning_rate == 0.01
    assert load_config("configs/imagenet.py", "vgg16").weight_decay == 5e-4
    with pytest.raises(ValueError, match="unknown recipe"):
        load_config("configs/cifar10.py", "resnet20,nope")


def test_check_config_names_the_bad_value():
    c = base_config()
    c.augment = "mixup"
    with pytest.raises(ConfigError, match=r"augment='mixup'.*allowed: cifar"):
        check_config(c)
    c = base_config()
    c.num_train_steps, c.num_epochs = 0, 0
    with pytest.raises(ConfigError, match="num_train_steps or num_epochs"):
        check_config(c)

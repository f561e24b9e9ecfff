"""The training system's parts, one at a time: schedules, decay, loss, data order, views, configs.

Reference numbers: He et al. 2016 (CIFAR: lr 0.1, /10 at 32k and 48k of 64k iterations,
weight decay 1e-4, batch 128); Goyal et al. 2017 (lr 0.1 per 256 images, linear scaling). The
recipe tests pin every recipe in configs/ to its paper (the sources are in docs/recipes.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx
from training_support import (
    MOCK_EXAMPLES,
    TINY,
    load_config,
    load_file,
    mock_datasets,
    tiny_config,
)

import archs
from archs.resnet import stack_blocks, unstack_blocks
from archs.training import base_config, data, optim, steps
from archs.training.config import check_config
from archs.training.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_he_cifar_step_schedule():
    c = load_config("configs/cifar10.py", "resnet20")
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


TRAIN_EXAMPLES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "imagenet2012": 1_281_167,
    "imagenette/320px-v2": 9_469,
}


def test_every_recipe_is_a_valid_config_with_its_schedule():
    cifar_recipes = load_file("configs/cifar10.py").RECIPES
    imagenet_recipes = load_file("configs/imagenet.py").RECIPES
    args = {
        "configs/cifar10.py": [None, "resnet110", *(f"resnet20,{r}" for r in cifar_recipes)],
        "configs/cifar100.py": [None, "densenet_bc_100_12"],
        "configs/imagenet.py": [None, *(f"resnet50,{r}" for r in imagenet_recipes)],
        "configs/imagenette.py": [None],
        "configs/finetune.py": [None],
    }
    for path, variants in args.items():
        for arg in variants:
            c = load_config(path, arg)
            check_config(c)
            steps_per_epoch = TRAIN_EXAMPLES[c.dataset] // c.batch_size
            total = c.num_train_steps or round(c.num_epochs * steps_per_epoch)
            optim.learning_rate_schedule(c, steps_per_epoch, total)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; allowed: fast, he"):
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


# ----- recipes against their papers (docs/recipes.md gives each value's source) --------------


def lr_at(c, steps_per_epoch: int, *epochs: float) -> list[float]:
    """The configured schedule's lr at the first step of each epoch given."""
    total = c.num_train_steps or round(c.num_epochs * steps_per_epoch)
    schedule = optim.learning_rate_schedule(c, steps_per_epoch, total)
    return [float(schedule(round(e * steps_per_epoch))) for e in epochs]


def test_cifar10_without_argument_is_the_fast_recipe_and_a_named_model_gets_its_paper():
    fast = load_config("configs/cifar10.py")
    assert (fast.model, fast.num_epochs, fast.batch_size, fast.schedule) == (
        "resnet20",
        5,
        64,
        "cosine",
    )
    assert load_config("configs/cifar10.py", "resnet20").num_train_steps == 64_000  # he
    assert load_config("configs/cifar10.py", "resnet20,he").to_dict() == (
        load_config("configs/cifar10.py", "resnet20").to_dict()
    )
    assert load_config("configs/cifar100.py").dataset == "cifar100"


@pytest.mark.parametrize(
    ("path", "arg", "recipe_keys"),
    [
        # A family, not a name prefix, chooses the recipe.
        ("configs/cifar10.py", "densenet121", {"batch_size": 64, "nesterov": True}),
        ("configs/cifar10.py", "resnext29_16x64d", {"weight_decay": 5e-4, "num_epochs": 300}),
        ("configs/imagenet.py", "resnext50_32x4d", {"num_epochs": 100, "pca_lighting": 0.1}),
        ("configs/imagenet.py", "inception_resnet_v2", {"optimizer": "rmsprop"}),
        ("configs/imagenet.py", "inception_v1", {"lr_decay_factor": 0.96, "weight_decay": 2e-4}),
        ("configs/imagenet.py", "seresnext50_32x4d", {"batch_size": 1024}),
        ("configs/imagenet.py", "zfnet", {"batch_size": 128, "eval_protocol": "ten_crop"}),
    ],
)
def test_recipe_is_chosen_by_family(path, arg, recipe_keys):
    c = load_config(path, arg)
    assert {k: c[k] for k in recipe_keys} == recipe_keys


def test_he_resnet110_holds_lr_001_for_about_400_iterations_then_01():
    c = load_config("configs/cifar10.py", "resnet110")
    total = c.num_train_steps
    schedule = optim.learning_rate_schedule(c, steps_per_epoch=390, total_steps=total)
    lrs = [float(schedule(s)) for s in (0, 200, 389, 390, 31_999, 32_000, 48_000)]
    np.testing.assert_allclose(lrs, [0.01, 0.01, 0.01, 0.1, 0.1, 0.01, 0.001], rtol=1e-6)
    assert load_config("configs/cifar10.py", "resnet56").warmup_epochs == 0


def test_goyal_recipe_follows_goyal_2017():
    c = load_config("configs/imagenet.py", "resnet50,goyal")
    check_config(c, devices=256)  # 32 images per device, one BatchNorm group each
    assert c.bn_group_size == 32
    assert c.weight_decay_exclude_norm_bias and c.weight_decay == 1e-4
    assert c.model_kwargs.zero_init_residual is True
    assert c.model_kwargs.fc_init_std == 0.01
    assert (c.momentum, c.nesterov, c.label_smoothing, c.augment) == (0.9, True, 0, "inception")
    assert optim.peak_learning_rate(c) == pytest.approx(0.1 * 8192 / 256)
    # From eta = 0.1 linearly to 3.2 over 5 epochs; /10 at 30, 60, 80 of 90 epochs.
    lrs = lr_at(c, 156, 0, 2.5, 5, 29.9, 30, 60, 80, 89.9)
    np.testing.assert_allclose(lrs, [0.1, 1.65, 3.2, 3.2, 0.32, 0.032, 0.0032, 0.0032], rtol=1e-4)


def test_inception_resnet_recipe_is_szegedy_2017_rmsprop():
    c = load_config("configs/imagenet.py", "inception_resnet_v2")
    assert (c.optimizer, c.rmsprop_decay, c.rmsprop_eps, c.momentum) == ("rmsprop", 0.9, 1.0, 0.9)
    np.testing.assert_allclose(lr_at(c, 10, 0, 1.9, 2, 4, 10), 0.045 * 0.94 ** np.array(
        [0, 0, 1, 2, 5]), rtol=1e-6)  # fmt: skip


def test_rmsprop_is_tensorflows_eps_inside_the_root_mean_square_from_one():
    """TensorFlow's RMSProp: ms = rho ms + (1 - rho) g^2 from ms = 1, mom = mu mom + lr g /
    sqrt(ms + eps), w -= mom."""
    c = base_config()
    c.update(optimizer="rmsprop", learning_rate=0.5, weight_decay=0.0, momentum=0.9)
    c.update(rmsprop_decay=0.9, rmsprop_eps=1.0)
    tx = optim.make_optimizer(c, optim.learning_rate_schedule(c, 1, 10))
    w, ms, mom = np.array([1.0, -2.0]), np.ones(2), np.zeros(2)
    params, opt_state = jnp.asarray(w, jnp.float32), None
    opt_state = tx.init(params)
    for g in (np.array([3.0, 0.5]), np.array([-1.0, 2.0])):
        updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
        params = optax.apply_updates(params, updates)
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.9 * mom + 0.5 * g / np.sqrt(ms + 1.0)
        w = w - mom
        np.testing.assert_allclose(params, w, rtol=1e-6)


PAPER_RECIPES = {
    # He et al. 2016, Sec. 4.2.
    ("configs/cifar10.py", "resnet56"): dict(
        batch_size=128, num_train_steps=64_000, learning_rate=0.1, lr_boundaries=(0.5, 0.75),
        momentum=0.9, weight_decay=1e-4, augment="cifar", crop_padding=4, nesterov=False,
    ),
    # Huang et al. 2017, Sec. 4.2.
    ("configs/cifar10.py", "densenet_bc_100_12"): dict(
        batch_size=64, num_epochs=300, learning_rate=0.1, lr_boundaries=(0.5, 0.75),
        momentum=0.9, nesterov=True, weight_decay=1e-4, augment="cifar",
    ),
    # Xie et al. 2017, Appendix A (CIFAR).
    ("configs/cifar10.py", "resnext29_8x64d"): dict(
        batch_size=128, num_epochs=300, learning_rate=0.1, lr_boundaries=(0.5, 0.75),
        momentum=0.9, weight_decay=5e-4, augment="cifar",
    ),
    # Krizhevsky et al. 2012, Sec. 4.1 and 5.
    ("configs/imagenet.py", "alexnet_lrn"): dict(
        batch_size=128, learning_rate=0.01, momentum=0.9, weight_decay=5e-4, pca_lighting=0.1,
        scale_jitter=(256, 256), num_epochs=90, eval_protocol="ten_crop",
    ),
    # Simonyan & Zisserman 2015, Sec. 3.1.
    ("configs/imagenet.py", "vgg16"): dict(
        batch_size=256, learning_rate=0.01, momentum=0.9, weight_decay=5e-4, pca_lighting=0.1,
        scale_jitter=(256, 512), num_epochs=74,
    ),
    # He et al. 2016, Sec. 3.4 and Table 3.
    ("configs/imagenet.py", "resnet50"): dict(
        batch_size=256, learning_rate=0.1, momentum=0.9, weight_decay=1e-4, pca_lighting=0.1,
        scale_jitter=(256, 480), num_epochs=120, eval_protocol="ten_crop",
    ),
    # Xie et al. 2017, Sec. 4.
    ("configs/imagenet.py", "resnext50_32x4d"): dict(
        batch_size=256, learning_rate=0.1, momentum=0.9, weight_decay=1e-4, augment="inception",
        eval_protocol="center",
    ),
    # Huang et al. 2017, Sec. 4.2.
    ("configs/imagenet.py", "densenet121"): dict(
        batch_size=256, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
        num_epochs=90, lr_boundaries=(30 / 90, 60 / 90),
    ),
    # Hu et al. 2018.
    ("configs/imagenet.py", "seresnet50"): dict(
        batch_size=1024, learning_rate=0.6, momentum=0.9, num_epochs=100,
        lr_boundaries=(0.3, 0.6, 0.9), augment="inception",
    ),
    # Szegedy et al. 2015, Sec. 6.
    ("configs/imagenet.py", "googlenet"): dict(
        momentum=0.9, schedule="exponential", lr_decay_factor=0.96, lr_decay_epochs=8,
        augment="inception", min_area=0.08,
    ),
    # You et al. 2017.
    ("configs/imagenet.py", "resnet50,lars"): dict(
        optimizer="lars", lars_trust_coefficient=0.001, momentum=0.9, warmup_epochs=5,
        schedule="polynomial", lr_decay_power=2.0, batch_size=8192, learning_rate=30.0,
        lr_base_batch_size=0, num_epochs=100, weight_decay=5e-4,
    ),
}  # fmt: skip


@pytest.mark.parametrize(("path", "arg"), list(PAPER_RECIPES), ids=lambda x: str(x))
def test_recipe_keys_are_the_papers(path, arg):
    c = load_config(path, arg)
    check_config(c)
    expected = PAPER_RECIPES[(path, arg)]
    assert {k: c[k] for k in expected} == expected


def test_polynomial_schedule_decays_to_zero_with_its_power():
    c = base_config()
    c.update(schedule="polynomial", lr_decay_power=2.0, learning_rate=0.4)
    lr = optim.learning_rate_schedule(c, steps_per_epoch=10, total_steps=100)
    np.testing.assert_allclose([lr(0), lr(50), lr(100)], [0.4, 0.1, 0.0], atol=1e-7)


def test_warmup_longer_than_the_run_is_refused():
    c = base_config()
    c.update(warmup_epochs=3, num_train_steps=20)
    with pytest.raises(
        ConfigError, match=r"warmup_epochs=3\.0 \(30 steps\) is longer than the run"
    ):
        optim.learning_rate_schedule(c, steps_per_epoch=10, total_steps=20)
    c.update(num_train_steps=0, num_epochs=2)
    with pytest.raises(ConfigError, match=r"warmup_epochs=3\.0 is longer than the run"):
        check_config(c)


def test_warmup_shape_and_bn_group_size_are_checked():
    c = base_config()
    c.update(warmup_epochs=1, warmup_shape="constant")
    with pytest.raises(ConfigError, match="warmup_start_factor > 0"):
        check_config(c)
    c = base_config()
    c.update(batch_size=96, grad_accum_steps=2, bn_group_size=16)
    check_config(c, devices=3)  # 16 images per device and micro-batch
    with pytest.raises(ConfigError, match=r"bn_group_size=16 does not divide .* of 12 images"):
        check_config(c, devices=4)


# ----- weight decay and LARS by role, with and without scanned blocks ------------------------


def _flat_values(state) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


def _state_like(state, flat: dict):
    """A copy of the nnx.State `state` holding the arrays of `flat` (path -> array)."""
    copy = jax.tree.map(lambda x: x, state)
    for path, variable in nnx.to_flat_state(copy):
        variable.set_value(jnp.asarray(flat[path]))
    return copy


def _one_update(config, params, grads):
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, 1, 10))

    @jax.jit
    def update(params, grads):
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    return update(params, grads)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_scanned_blocks_decay_and_adapt_as_the_unscanned_model(optimizer):
    def abstract_params(scan: bool):
        return nnx.state(
            nnx.eval_shape(
                lambda: archs.create_model(
                    "resnet20", depths=(1, 3, 2), scan_blocks=scan, rngs=nnx.Rngs(0)
                )
            ),
            nnx.Param,
        )

    rng = np.random.default_rng(0)

    def per_layer_random(abstract) -> dict:
        # Layers of different scales, so that one trust ratio over a stack would differ.
        return {
            p: rng.standard_normal(v.shape).astype(np.float32) * rng.uniform(0.1, 10)
            for p, v in nnx.to_flat_state(abstract)
        }

    abstract_plain, abstract_scanned = abstract_params(False), abstract_params(True)
    values, grads = per_layer_random(abstract_plain), per_layer_random(abstract_plain)
    plain, scanned = (
        _state_like(abstract_plain, values),
        _state_like(abstract_scanned, stack_blocks(values)),
    )
    grads_plain = _state_like(abstract_plain, grads)
    grads_scanned = _state_like(abstract_scanned, stack_blocks(grads))

    def decayed(params):
        roles = optim.parameter_roles(params)
        return jax.tree.map(lambda r, p: np.full(p.shape, r == optim.WEIGHT), roles, params)

    mask_plain, mask_scanned = _flat_values(decayed(plain)), _flat_values(decayed(scanned))
    assert unstack_blocks(mask_scanned).keys() == mask_plain.keys()
    for path, mask in unstack_blocks(mask_scanned).items():
        np.testing.assert_array_equal(mask, mask_plain[path], err_msg=str(path))
    assert not mask_plain[("layer2", 1, "bn1", "scale")].any()
    assert mask_plain[("layer2", 1, "conv1", "kernel")].all()

    c = base_config()
    c.update(optimizer=optimizer, weight_decay=0.1, weight_decay_exclude_norm_bias=True)
    new_plain = _flat_values(_one_update(c, plain, grads_plain))
    new_scanned = unstack_blocks(_flat_values(_one_update(c, scanned, grads_scanned)))
    for path, value in new_scanned.items():
        np.testing.assert_allclose(value, new_plain[path], rtol=1e-5, atol=1e-7, err_msg=str(path))
    assert not np.allclose(new_plain[("layer2", 1, "conv1", "kernel")], _flat_values(plain)[
        ("layer2", 1, "conv1", "kernel")])  # fmt: skip


def test_roles_come_from_names_and_unknown_names_are_refused():
    params = {"bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}, "fc": {"kernel": jnp.ones((3, 2)),
              "bias": jnp.ones(2)}, "stack": {"bn": {"scale": jnp.ones((4, 3))}}}  # fmt: skip
    assert optim.parameter_roles(params) == {
        "bn": {"scale": "norm", "bias": "norm"},
        "fc": {"kernel": "weight", "bias": "bias"},
        "stack": {"bn": {"scale": "norm"}},
    }
    assert optim.stack_depths(params)["stack"]["bn"]["scale"] == 1
    with pytest.raises(ValueError, match="no role for a parameter named 'embedding'"):
        optim.parameter_roles({"embed": {"embedding": jnp.ones((3, 2))}})


# ----- a skipped update -------------------------------------------------------------------


def test_a_skipped_update_keeps_the_schedule_on_the_step():
    model = archs.create_model(TINY, num_classes=3, rngs=nnx.Rngs(0))
    parts, params, model_state = steps.split_model(model)
    c = base_config()
    c.update(schedule="cosine", learning_rate=0.1)
    schedule = optim.learning_rate_schedule(c, steps_per_epoch=1, total_steps=10)
    tx = optim.make_optimizer(c, schedule)
    good = steps.StepConfig(
        (0.5,) * 3, (0.25,) * 3, jnp.float32, 0.0, 0.0, steps.device_augment("none", 0)
    )
    bad = dataclasses.replace(good, std=(0.0,) * 3)  # images / 0: a non-finite loss
    step_good, step_bad = (
        jax.jit(steps.make_train_step(parts, tx, cfg, skip_nonfinite=True)) for cfg in (good, bad)
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(1, 255, (4, 8, 8, 3)), jnp.uint8),
        "label": jnp.asarray([0, 1, 2, 0], jnp.int32),
    }
    state = step_good(steps.init_state(params, model_state, tx, seed=0), batch)
    skipped = step_bad(state, batch)
    assert float(skipped.metrics["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(skipped.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    schedule_states = [
        s
        for s in jax.tree.leaves(
            step_good(skipped, batch).opt_state,
            is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState),
        )
        if isinstance(s, optax.ScaleByScheduleState)
    ]
    assert [int(s.count) for s in schedule_states] == [3]  # = state.step: lr = schedule(2)

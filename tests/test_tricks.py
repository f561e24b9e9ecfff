"""Training tricks: EMA of the weights, Mixup/CutMix, gradient clipping, flip evaluation, and
their config keys (RandAugment and the trackers have their own test files).

EMA: the average after k steps against its closed form. Mixing: timm's batch-mode definitions
(label mass, CutMix's corrected lambda, mix_prob), the device-independent pairing, and the same
mixed batch and update on 1 and 8 devices (slow, subprocess). Clipping: against
`optax.clip_by_global_norm`, once per optimizer step under accumulation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from training_support import TINY, device_count_env

import archs
from archs.training import base_config, ema, mixing, optim, steps
from archs.training.config import check_config
from archs.training.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10


def _setup(norm: bool = True, drop_rate: float = 0.1, seed: int = 0):
    model = archs.create_model(
        TINY, num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed), norm=norm, drop_rate=drop_rate
    )
    return steps.split_model(model)


def _cfg(**overrides) -> steps.StepConfig:
    fields = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "dtype": jnp.float32,
        "label_smoothing": 0.0,
        "aux_weight": 0.0,
        "augment": steps.device_augment("cifar", 4),
        **overrides,
    }
    return steps.StepConfig(**fields)


def _batch(n: int = 8, seed: int = 0, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8),
        "label": rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    }


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


# ----- EMA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_after_k_steps_equals_the_closed_form(warmup):
    decay, k = 0.8, 4
    parts, params, model_state = _setup()
    tx = optax.sgd(0.5, momentum=0.9)
    cfg = _cfg(ema_decay=decay, ema_warmup=warmup)
    state = steps.init_state(params, model_state, tx, seed=0, with_ema=True)
    step = jax.jit(steps.make_train_step(parts, tx, cfg))
    weights = [_leaves((state.params, state.model_state))]
    for i in range(k):
        state = step(state, _batch(seed=i))
        weights.append(_leaves((state.params, state.model_state)))
    # Update t (t = 0, 1, ...) uses decay d_t; weights[t + 1] enters with weight (1 - d_t) and is
    # then multiplied by every later decay.
    d = [min(decay, 1 - (1 + t) ** (-2 / 3)) if warmup else decay for t in range(k)]
    coefficients = [np.prod(d)] + [(1 - d[t]) * np.prod(d[t + 1 :]) for t in range(k)]
    expected = [
        sum(c * w[j] for c, w in zip(coefficients, weights, strict=True))
        for j in range(len(weights[0]))
    ]
    got = _leaves((state.ema.params, state.ema.model_state))
    assert len(got) == len(expected) and any(v.ndim > 1 for v in got)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    # The average lags the weights (BatchNorm statistics included).
    assert not np.allclose(got[0], weights[-1][0])


def test_ema_warmup_follows_timm_model_ema_v3():
    # timm ModelEmaV3.get_decay(step) with use_warmup: 1 - (1 + step - 1) ** -(2/3), capped.
    got = [float(ema.decay_at(t, 0.999, True)) for t in (0, 1, 10, 10_000_000)]
    np.testing.assert_allclose(got, [0.0, 1 - 2 ** (-2 / 3), 1 - 11 ** (-2 / 3), 0.999], rtol=1e-6)
    assert float(ema.decay_at(0, 0.999, False)) == pytest.approx(0.999)


def test_ema_is_absent_when_off_and_evaluated_when_asked():
    parts, params, model_state = _setup(drop_rate=0.0)
    tx = optax.sgd(0.1)
    plain = steps.init_state(params, model_state, tx, seed=0)
    assert plain.ema is None
    step = jax.jit(steps.make_train_step(parts, tx, _cfg()))
    assert step(plain, _batch()).ema is None
    # Evaluating the average = evaluating a state whose weights are the average.
    _, other_params, other_state = _setup(seed=1)
    with_ema = plain.replace(ema=ema.init(other_params, other_state))
    batch = {**_batch(), "mask": np.ones(8, bool)}
    cfg = _cfg()
    averaged = steps.make_eval_step(parts, cfg, use_ema=True)(with_ema, batch)
    swapped = plain.replace(params=other_params, model_state=other_state)
    direct = steps.make_eval_step(parts, cfg)(swapped, batch)
    raw = steps.make_eval_step(parts, cfg)(with_ema, batch)
    assert float(averaged["loss_sum"]) == pytest.approx(float(direct["loss_sum"]), rel=1e-6)
    assert float(averaged["loss_sum"]) != pytest.approx(float(raw["loss_sum"]), rel=1e-3)


# ----- Mixup / CutMix ---------------------------------------------------------------------------


def test_partner_is_index_xor_one():
    np.testing.assert_array_equal(mixing.partner(jnp.arange(6)), np.arange(6) ^ 1)
    with pytest.raises(ValueError, match="even batch"):
        mixing.partner(jnp.arange(5))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_label_mass_sums_to_one_and_equals_lambda(smoothing):
    own, other = jnp.array([0, 3, 5, 7]), jnp.array([3, 0, 7, 5])
    labels = mixing.MixedLabels(own=own, partner=other, lam=jnp.full((4,), 0.7))
    targets = np.asarray(labels.targets(NUM_CLASSES, smoothing))
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    off = smoothing / NUM_CLASSES
    rows = np.arange(4)
    np.testing.assert_allclose(targets[rows, own], 0.7 * (1 - smoothing) + off, rtol=1e-6)
    np.testing.assert_allclose(targets[rows, other], 0.3 * (1 - smoothing) + off, rtol=1e-6)
    np.testing.assert_array_equal(labels.top1_labels(), own)
    flipped = mixing.MixedLabels(own=own, partner=other, lam=jnp.full((4,), 0.3))
    np.testing.assert_array_equal(flipped.top1_labels(), other)


def test_cutmix_box_area_matches_its_corrected_lambda():
    cfg = mixing.MixConfig(cutmix_alpha=1.0)
    images, labels = _batch(n=4, size=12)["image"], jnp.arange(4)
    corrected = 0
    for seed in range(40):
        key = jax.random.key(seed)
        mix = mixing.sample_mix(key, cfg, 12, 12)
        weight = np.asarray(mix.pixel_weight)
        assert set(np.unique(weight)) <= {0.0, 1.0}
        assert float(mix.lam) == pytest.approx(weight.mean(), abs=1e-6)
        raw = float(jax.random.beta(jax.random.split(key, 5)[3], 1.0, 1.0))
        corrected += abs(raw - float(mix.lam)) > 1e-3
        mixed, mixed_labels = mixing.mix_batch(images, labels, mix)
        box = weight == 0
        partner_images = images[np.arange(4) ^ 1]
        np.testing.assert_array_equal(np.asarray(mixed)[:, box], partner_images[:, box])
        np.testing.assert_array_equal(np.asarray(mixed)[:, ~box], images[:, ~box])
        np.testing.assert_allclose(mixed_labels.lam, float(mix.lam))
    assert corrected  # clipped boxes change lambda


def test_mixup_blends_with_the_partner_and_switch_prob_picks_the_kind():
    images, labels = _batch(n=4)["image"], jnp.arange(4)
    mix = mixing.sample_mix(jax.random.key(0), mixing.MixConfig(mixup_alpha=0.4), 16, 16)
    lam = float(mix.lam)
    assert 0.0 < lam < 1.0
    mixed, _ = mixing.mix_batch(images, labels, mix)
    x = images.astype(np.float32)
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[np.arange(4) ^ 1], rtol=1e-5)
    both = {p: mixing.MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=p) for p in (0, 1)}
    for seed in range(10):
        to_mixup = mixing.sample_mix(jax.random.key(seed), both[0], 8, 8)
        to_cutmix = mixing.sample_mix(jax.random.key(seed), both[1], 8, 8)
        assert np.unique(np.asarray(to_mixup.pixel_weight)).size == 1
        assert set(np.unique(np.asarray(to_cutmix.pixel_weight))) <= {0.0, 1.0}


def test_mix_prob_zero_leaves_the_batch_unchanged():
    cfg = mixing.MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)
    batch = _batch()
    key = jax.random.key(4)
    mix = mixing.sample_mix(key, cfg, 16, 16)
    mixed, labels = mixing.mix_batch(batch["image"], batch["label"], mix)
    np.testing.assert_array_equal(mixed, batch["image"].astype(np.float32))
    np.testing.assert_array_equal(labels.lam, 1.0)
    # And the whole train-step input equals the unmixed one.
    plain = steps.prepare_batch(_cfg(), batch, key, 0)
    never = steps.prepare_batch(_cfg(mix=cfg), batch, key, 0)
    always = steps.prepare_batch(_cfg(mix=mixing.MixConfig(mixup_alpha=1.0)), batch, key, 0)
    np.testing.assert_array_equal(never[0], plain[0])
    assert not np.array_equal(always[0], plain[0])


def _brightness_classifier():
    """Tiny without BatchNorm, set to predict class 1 for images brighter than mid-grey and
    class 0 otherwise (exactly, for uniform images)."""
    parts, params, model_state = _setup(norm=False, drop_rate=0.0)
    weights = nnx.to_pure_dict(params)
    weights = jax.tree.map(jnp.zeros_like, weights)
    # Normalised grey level g in [-2, 2] (mean 0.5, std 0.25) -> feature 0 = g + 2 = 4 * brightness.
    weights["conv1"]["conv"]["kernel"] = (
        weights["conv1"]["conv"]["kernel"].at[1, 1, :, 0].set(1 / 3)
    )
    weights["conv1"]["conv"]["bias"] = weights["conv1"]["conv"]["bias"].at[0].set(2.0)
    weights["fc"]["kernel"] = weights["fc"]["kernel"].at[0, 1].set(10.0)
    weights["fc"]["bias"] = jnp.full((NUM_CLASSES,), -100.0).at[0].set(0.0).at[1].set(-20.0)
    nnx.replace_by_pure_dict(params, weights)
    return parts, params, model_state


def test_mixed_train_step_counts_top1_against_the_heavier_label():
    parts, params, model_state = _brightness_classifier()
    tx = optax.sgd(0.0)
    cfg = _cfg(
        mix=mixing.MixConfig(mixup_alpha=1.0),
        label_smoothing=0.1,
        augment=steps.device_augment("none", 0),
    )
    state = steps.init_state(params, model_state, tx, seed=0)
    train_step = jax.jit(steps.make_train_step(parts, tx, cfg))
    # Black images of class 0 paired with white images of class 1: the mixed image is brighter
    # than grey exactly when the white image's label is the heavier one.
    images = np.zeros((8, 8, 8, 3), np.uint8)
    images[1::2] = 255
    batch = {"image": images, "label": np.tile([0, 1], 4).astype(np.int32)}
    lams = []
    for _ in range(6):
        new = train_step(state, batch)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        x, labels = steps.prepare_batch(cfg, batch, key, 0)
        logits = parts.merge(state.params, state.model_state, train=True)(x)
        expected_loss = steps.soft_cross_entropy(logits, labels.targets(NUM_CLASSES, 0.1)).sum()
        assert float(new.metrics["loss_sum"]) == pytest.approx(float(expected_loss), rel=1e-5)
        assert float(new.metrics["correct"]) == 8
        lams.append(float(labels.lam[0]))
        state = new.replace(metrics=steps.zero_metrics())
    assert min(lams) < 0.5 < max(lams)  # each label was the heavier one at some step


def test_check_pairs_wants_an_even_batch_per_device():
    mixing.check_pairs(16, 8)
    with pytest.raises(ConfigError, match=r"batch_size=24 .* 8 device"):
        mixing.check_pairs(24, 8)


MULTI_DEVICE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, optax, sys
sys.path.insert(0, "tests")
from jax.sharding import PartitionSpec as P
from test_tricks import _batch, _cfg, _setup
from archs.training import mixing, parallel, steps

assert jax.device_count() == 8
mix = mixing.MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0)
cfg = _cfg(mix=mix, augment=steps.device_augment("cifar", 4, "2,9"))
batch = _batch(n=16)
mesh = parallel.make_mesh()

def local(b, key):
    first = jax.lax.axis_index("data") * b["label"].shape[0]
    x, y = steps.prepare_batch(cfg, b, key, first)
    return x, y.partner, y.lam

whole = jax.jit(lambda b, key: steps.prepare_batch(cfg, b, key, 0))
per_device = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()),
                                   out_specs=P("data"), check_vma=False))
for seed in range(4):
    key = jax.random.key(seed)
    ref_x, ref_y = whole(batch, key)
    x, partner, lam = per_device(batch, key)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(partner, ref_y.partner)
    np.testing.assert_array_equal(lam, ref_y.lam)

# The update and the average, without BatchNorm (whose statistics are per device by design).
cfg = _cfg(mix=mix, label_smoothing=0.1, ema_decay=0.9)
parts, params, model_state = _setup(norm=False, drop_rate=0.0)
tx = optax.sgd(0.1, momentum=0.9)
state = steps.init_state(params, model_state, tx, seed=0, with_ema=True)
make = lambda axis: steps.make_train_step(parts, tx, cfg, axis_name=axis)
host_state = jax.device_get(state)
one = jax.jit(make(None))(state, batch)  # on one device
with jax.set_mesh(mesh):
    for mode, bn_mode in (("jit", "sync"), ("jit", "per_device"), ("pmap", "per_device")):
        step = parallel.distribute_train_step(make, mesh, mode, bn_mode)
        out = step(parallel.replicate(host_state, mesh),
                   parallel.global_batch(batch, mesh, mode == "pmap"))
        pairs = zip(jax.tree.leaves((one.params, one.ema)), jax.tree.leaves((out.params, out.ema)))
        for a, b in pairs:
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        assert float(out.metrics["correct"]) == float(one.metrics["correct"])
        assert jax.tree.leaves(out.ema)
print("same on 1 and 8 devices")
"""


@pytest.mark.slow
def test_mixed_batch_update_and_ema_are_the_same_on_1_and_8_devices():
    env = {
        **os.environ,
        **device_count_env(8),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "same on 1 and 8 devices" in out.stdout


# ----- Gradient clipping ------------------------------------------------------------------------


def test_clipped_equals_optax_clip_by_global_norm_then_the_optimizer():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    grads = {"w": jnp.full((3, 2), 4.0), "b": jnp.array([3.0, -5.0])}
    tx = optax.sgd(0.1, momentum=0.9)
    assert optim.clipped(tx, 0.0) is tx
    ours = optim.clipped(tx, 1.5)
    clip = optax.clip_by_global_norm(1.5)
    clipped_grads, _ = clip.update(grads, clip.init(params))
    expected, _ = tx.update(clipped_grads, tx.init(params), params)
    got, _ = ours.update(grads, ours.init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(optax.tree.norm(clipped_grads)) == pytest.approx(1.5, rel=1e-6)


def test_clipping_under_accumulation_clips_the_averaged_gradient_once():
    # No BatchNorm and no dropout: two micro-batches' averaged gradient is the whole batch's.
    parts, params, model_state = _setup(norm=False, drop_rate=0.0)
    max_norm = 1e-3  # far below the gradient's norm, so the clip is active
    tx = optim.clipped(optax.sgd(1.0), max_norm)
    cfg = _cfg(augment=steps.device_augment("none", 0))
    state = steps.init_state(params, model_state, tx, seed=0)
    batch = _batch(n=8)
    whole = jax.jit(steps.make_train_step(parts, tx, cfg))(state, batch)
    micro = jax.jit(steps.make_train_step(parts, tx, cfg, accum_steps=2))(state, batch)
    moved = jax.tree.map(jnp.subtract, micro.params, state.params)
    # Clipping each micro-batch before averaging would move less than max_norm.
    assert float(optax.tree.norm(moved)) == pytest.approx(max_norm, rel=1e-4)
    for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----- Flip evaluation ------------------------------------------------------------------------


def test_flip_eval_averages_the_logits_of_two_forward_passes():
    parts, params, model_state = _setup()
    state = steps.init_state(params, model_state, optax.sgd(0.1), seed=0)
    batch = {**_batch(), "mask": np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)}
    cfg = _cfg(eval_flip=True)
    got = jax.jit(steps.make_eval_step(parts, cfg))(state, batch)
    model = parts.merge(state.params, state.model_state, train=False)
    x = steps.normalize(batch["image"], cfg.mean, cfg.std, jnp.float32)
    logits = (model(x) + model(x[:, :, ::-1])) / 2
    mask = batch["mask"]
    loss = steps.cross_entropy(logits, batch["label"], 0.0)
    top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
    assert float(got["loss_sum"]) == pytest.approx(float(np.sum(loss * mask)), rel=1e-5)
    top1 = np.argmax(logits, -1) == batch["label"]
    assert float(got["top1"]) == np.sum(top1 * mask)
    assert float(got["top5"]) == np.sum((top5 == batch["label"][:, None]).any(-1) * mask)
    center = steps.make_eval_step(parts, _cfg())(state, batch)
    assert float(center["loss_sum"]) != pytest.approx(float(got["loss_sum"]), rel=1e-4)


# ----- Config keys ----------------------------------------------------------------------------


def test_trick_keys_are_off_by_default():
    c = base_config()
    check_config(c)
    assert not mixing.MixConfig.from_config(c).enabled
    c.update(cutmix_alpha=1.0, mix_prob=0.8)
    assert mixing.MixConfig.from_config(c) == mixing.MixConfig(0.0, 1.0, 0.8, 0.5)
    c = base_config()
    assert (c.ema_decay, c.mixup_alpha, c.cutmix_alpha, c.grad_clip_norm) == (0, 0, 0, 0)
    assert c.randaugment == "" and tuple(c.writers) == ("tensorboard",)
    assert c.eval_protocol == "center"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("mixup_alpha", -0.2, "mixup_alpha must be >= 0"),
        ("cutmix_alpha", -1.0, "cutmix_alpha must be >= 0"),
        ("mix_prob", 1.5, r"mix_prob must be in \[0, 1\], got 1.5"),
        ("mix_switch_prob", -0.1, r"mix_switch_prob must be in \[0, 1\]"),
        ("grad_clip_norm", -1.0, "grad_clip_norm must be >= 0"),
        ("randaugment", "2", r"randaugment='2' is not 'N,M'"),
        ("randaugment", "0,9", r"randaugment='0,9' is not 'N,M'"),
        ("randaugment", "2,11", r"magnitude M in \[0, 10\]"),
        ("eval_protocol", "flips", r"eval_protocol='flips' .*allowed: .*flip"),
        ("writers", ("tensorboard", "comet"), r"'comet' is not supported; allowed: tensorboard"),
    ],
)
def test_bad_trick_values_name_the_value_and_what_is_allowed(key, value, message):
    c = base_config()
    c[key] = value
    with pytest.raises(ConfigError, match=message) as error:
        check_config(c)
    assert "\n" not in str(error.value)


# ----- every knob at once, end to end ----------------------------------------------------------

KNOBS = (
    "ema_decay=0.9",
    "ema_warmup=True",
    "mixup_alpha=0.2",
    "cutmix_alpha=1.0",
    "randaugment=2,5",
    "grad_clip_norm=1.0",
    "eval_protocol=flip",
    "batch_size=16",
)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_every_knob_on_8_devices_trains_evaluates_and_resumes_bitwise(pipeline, tmp_path):
    """Device augmentation and RandAugment in the step (memory, tfds mock data), or host
    augmentation and RandAugment in tf.data (stream, an image folder on disk: tfds's mock
    patches file access while a dataset is built, which checkpoints written meanwhile would
    go through). Then a second run is SIGKILLed after its first checkpoint and resumed: it ends
    bitwise equal to the whole one (EMA, mixing keys, RandAugment and optimizer state)."""
    from training_support import SMALL, cli, final_model, lines

    from benchmarks.input_pipeline import synthetic_jpeg_folder

    env = device_count_env(8)
    args = (*SMALL, *KNOBS, f"data_pipeline={pipeline}")
    if pipeline == "stream":
        synthetic_jpeg_folder(str(tmp_path / "images"), 48, classes=3, size=(40, 56))
        synthetic_jpeg_folder(str(tmp_path / "images"), 16, classes=3, split="test", size=(48, 36))
        args += (f"dataset=folder:{tmp_path / 'images'}", "eval_split=test", "augment=inception")
        env["MOCK_DATA"] = "0"
    whole = cli(tmp_path / "whole", *args, env=env)
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    theirs = lines(tmp_path / "whole")
    assert [r["step"] for r in theirs if "eval/ema_top1" in r] == [10, 20]

    killed = cli(tmp_path / "killed", *args, env={**env, "TINY_STEP_SLEEP": "0.3"})
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[1][-2000:]
        time.sleep(0.1)
    killed.kill()
    killed.wait()
    resumed = cli(tmp_path / "killed", *args, env=env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]

    a, b = final_model(tmp_path / "whole"), final_model(tmp_path / "killed")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ours = lines(tmp_path / "killed")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/top1", "eval/loss", "eval/ema_loss", "eval/ema_top1"):
            assert x.get(key) == y.get(key), (x["step"], key)

"""The generic ResNet builder: counts and MACs against references, parts against naive maths.

The ImageNet nets are only built abstractly (`summary.abstract_model`); real forward passes use
small variants at 16-32 pixels. Models are initialised from an RBG key, whose initialisers
compile far faster on CPU than threefry's.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import archs
from archs import layers, resnet, summary
from archs.resnet import stack_blocks, unstack_blocks
from archs.summary import abstract_model, count_params
from benchmarks import compile as compile_bench

# Parameter counts of torchvision 0.29's and timm 1.0's builders of these names, and for the
# papers' nets the counts of their layer tables (He et al. 2016, Sec. 4.2 and Table 1; Xie et
# al. 2017, Sec. 5.3), as archs/references.py records them.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "plain18": 11_515_688,
    "plain34": 21_623_848,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "plain20": 269_722,
    "plain32": 464_154,
    "plain44": 658_586,
    "plain56": 853_018,
    "plain110": 1_727_962,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
    "seresnet50": 28_088_024,
    "seresnet101": 49_326_872,
    "seresnet152": 66_821_848,
    "seresnext50_32x4d": 27_559_896,
    "seresnext101_32x4d": 48_955_416,
    "senet154": 115_088_984,
}

# Small variants for real forward passes; the bottleneck ones output 16/32/64/64 channels.
TINY_BOTTLENECK = {"depths": (1, 1, 1, 1), "widths": (4, 8, 16, 16)}
TINY_GROUPED = {"groups": 2, "width_per_group": 32}


def _rngs() -> nnx.Rngs:
    return nnx.Rngs(jax.random.key(0, impl="unsafe_rbg"))


def _build(name: str, **overrides) -> nnx.Module:
    return archs.create_model(name, rngs=_rngs(), **overrides)


def _param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(map(str, path)): tuple(v.shape) for path, v in flat}


def _feature_shapes(name: str, size: int, **overrides) -> dict[str, tuple[int, ...]]:
    """features() output shapes of one image, traced abstractly."""
    graphdef, state = nnx.split(summary.abstract_model(name, **overrides))

    def features(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model.features(x)

    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return {k: v.shape for k, v in jax.eval_shape(features, state, x).items()}


@pytest.fixture(scope="module")
def resnet20():
    return _build("resnet20")


# ResNet-1202's 600 blocks take ~10 s to trace: checked with `pytest -m slow`.
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "resnet1202" else n for n in EXPECTED_PARAMS],
)
def test_param_count_and_macs_match_reference(name):
    model = summary.abstract_model(name)
    info = archs.model_info(name)
    assert summary.count_params(model) == EXPECTED_PARAMS[name] == info.reference_params
    macs = summary.count_macs(model, info.image_size) / 1e9
    assert macs == pytest.approx(info.reference_gmacs, rel=0.01)


def test_stride_in_changes_macs_not_param_shapes():
    # torchvision's docs: ResNet-50 (v1.5) 4.09 GFLOPS (MACs); v1, stride on the 1x1: 3.86.
    v1 = summary.abstract_model("resnet50", stride_in="1x1")
    v15 = summary.abstract_model("resnet50")
    assert _param_shapes(v1) == _param_shapes(v15)
    assert summary.count_macs(v1, 224) / 1e9 == pytest.approx(3.86, rel=0.01)
    assert summary.count_macs(v15, 224) / 1e9 == pytest.approx(4.09, rel=0.01)


def test_se_override_adds_only_se_parameters():
    base = _param_shapes(summary.abstract_model("resnet50"))
    se = _param_shapes(summary.abstract_model("resnet50", attention="se", se_reduction=8))
    added = set(se) - set(base)
    assert set(base) <= set(se)
    assert all(base[k] == se[k] for k in base)
    assert added and all(".se.fc" in k for k in added)
    # One SE per block (16), hidden width channels / 8: layer4 has 2048 -> 256 -> 2048.
    assert sum(k.endswith(".se.fc1.kernel") for k in added) == 16
    assert se["layer4.0.se.fc1.kernel"] == (1, 1, 2048, 256)
    assert se["layer4.0.se.fc2.kernel"] == (1, 1, 256, 2048)


def test_se_width_rounds_as_timm():
    # timm's make_divisible(channels / r, 8, round_limit=0): nearest multiple of 8, at least 8.
    assert [resnet.se_width(c, 16) for c in (16, 64, 120, 200, 256, 2048)] == [8, 8, 8, 16, 16, 128]
    assert resnet.se_width(64, 16, divisor=1) == 4
    # timm 1.0 seresnet18 / seresnet34 (64 -> 8 in layer1): 11,779,624 / 21,960,416 parameters.
    se18 = summary.abstract_model("resnet18", attention="se")
    assert summary.count_params(se18) == 11_779_624
    assert summary.count_params(summary.abstract_model("resnet34", attention="se")) == 21_960_416
    assert _param_shapes(se18)["layer1.0.se.fc1.kernel"] == (1, 1, 64, 8)


def test_senet154_follows_timm_layout():
    shapes = _param_shapes(summary.abstract_model("senet154"))
    # timm 1.0 senet154: deep stem 3x3/2 64, 3x3 64, 3x3 128 (timm's conv1.0, conv1.3, conv1.6).
    assert [shapes[f"conv1.{i}.kernel"] for i in (0, 2, 4)] == [
        (3, 3, 3, 64),
        (3, 3, 64, 64),
        (3, 3, 64, 128),
    ]
    # First 1x1 half the grouped width (64 groups of 4 -> 256 -> 128), 3x3 projection only
    # where the block strides.
    assert shapes["layer1.0.conv1.kernel"] == (1, 1, 128, 128)
    assert shapes["layer1.0.conv2.kernel"] == (3, 3, 2, 256)
    assert shapes["layer1.0.downsample.0.kernel"] == (1, 1, 128, 256)
    assert shapes["layer2.0.downsample.0.kernel"] == (3, 3, 256, 512)
    assert shapes["layer4.0.se.fc1.kernel"] == (1, 1, 2048, 128)


def test_shortcut_options_change_only_projections():
    a = _param_shapes(summary.abstract_model("resnet20"))
    b = _param_shapes(summary.abstract_model("resnet20", shortcut="B"))
    c = _param_shapes(summary.abstract_model("resnet20", shortcut="C"))
    assert not any("downsample" in k for k in a)
    # B projects at the two stage transitions; C in all nine blocks.
    assert {k.split(".downsample")[0] for k in b if "downsample" in k} == {"layer2.0", "layer3.0"}
    assert len({k.split(".downsample")[0] for k in c if "downsample" in k}) == 9
    assert {k: v for k, v in b.items() if "downsample" not in k} == a
    assert {k: v for k, v in c.items() if "downsample" not in k} == a


def test_feature_shapes_of_resnet50():
    assert _feature_shapes("resnet50", 224) == {
        "stem": (1, 56, 56, 64),
        "stage1": (1, 56, 56, 256),
        "stage2": (1, 28, 28, 512),
        "stage3": (1, 14, 14, 1024),
        "stage4": (1, 7, 7, 2048),
        "pre_logits": (1, 2048),
    }


def test_pool_ceil_mode_changes_stem_size():
    # Deep stem on 30 pixels: 15 after the stride-2 conv; PyTorch's MaxPool2d(3, 2, padding=1)
    # gives floor(14 / 2) + 1 = 8, MaxPool2d(3, 2, ceil_mode=True) ceil(12 / 2) + 1 = 7.
    tiny = {**TINY_BOTTLENECK, **TINY_GROUPED, "stem_width": 8}
    assert _feature_shapes("senet154", 30, **tiny)["stem"] == (1, 8, 8, 16)
    assert _feature_shapes("senet154", 30, pool_ceil_mode=True, **tiny)["stem"] == (1, 7, 7, 16)


# Each block type once (resnet20 below: basic blocks, CIFAR stem, option A): a plain net, the
# ImageNet stem with bottlenecks and projections, grouped bottlenecks, and SE + grouped
# bottlenecks + the deep stem + dropout.
@pytest.mark.parametrize(
    ("name", "overrides", "size"),
    [
        ("plain20", {"depths": (1, 1, 1)}, 16),
        ("resnet50", TINY_BOTTLENECK, 32),
        ("resnext29_8x64d", {**TINY_GROUPED, "depths": (1, 1, 1), "widths": (4, 8, 16)}, 16),
        ("senet154", {**TINY_BOTTLENECK, **TINY_GROUPED, "stem_width": 8, "drop_rate": 0.5}, 32),
    ],
)
def test_forward_train_and_eval(name, overrides, size):
    model = _build(name, num_classes=7, **overrides)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        logits, aux = model(x, return_aux=True)
        assert logits.shape == (2, 7) and aux == ()
        assert bool(jnp.isfinite(logits).all())
    stages = [f"stage{i}" for i in range(1, len(overrides["depths"]) + 1)]
    assert list(model.features(x)) == ["stem", *stages, "pre_logits"]
    if overrides.get("drop_rate"):
        np.testing.assert_array_equal(model(x), model(x))
        model.train()
        assert not np.allclose(model(x), model(x))


def test_resnet20_forward_and_features(resnet20):
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    for mode in ("train", "eval"):
        getattr(resnet20, mode)()
        logits = resnet20(x)
        assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    shapes = {k: v.shape for k, v in resnet20.features(x).items()}
    assert shapes == {
        "stem": (2, 32, 32, 16),
        "stage1": (2, 32, 32, 16),
        "stage2": (2, 16, 16, 32),
        "stage3": (2, 8, 8, 64),
        "pre_logits": (2, 64),
    }


def test_option_a_shortcut_subsamples_and_zero_pads(resnet20):
    block = resnet20.layer2[0]  # 16 -> 32 channels, stride 2
    x = np.arange(2 * 6 * 6 * 16, dtype=np.float32).reshape(2, 6, 6, 16)
    out = np.asarray(block.identity(jnp.asarray(x)))
    assert out.shape == (2, 3, 3, 32)
    np.testing.assert_array_equal(out[..., 8:24], x[:, ::2, ::2, :])
    assert not out[..., :8].any() and not out[..., 24:].any()


def test_zero_init_residual_zeroes_last_bn_scale(resnet20):
    np.testing.assert_array_equal(resnet20.layer1[0].bn2.scale[...], 1.0)
    basic = _build("resnet20", zero_init_residual=True)
    assert not np.asarray(basic.layer3[2].bn2.scale[...]).any()
    np.testing.assert_array_equal(basic.layer3[2].bn1.scale[...], 1.0)
    bottleneck = _build("resnet50", zero_init_residual=True, **TINY_BOTTLENECK)
    assert not np.asarray(bottleneck.layer2[0].bn3.scale[...]).any()
    np.testing.assert_array_equal(bottleneck.layer2[0].bn2.scale[...], 1.0)
    np.testing.assert_array_equal(bottleneck.layer2[0].downsample[1].scale[...], 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shortcut": "D"}, "shortcut must be one of 'A', 'B', 'C', 'none', got 'D'"),
        ({"stride_in": "2x2"}, "stride_in must be one of '1x1', '3x3', got '2x2'"),
        ({"block": "wide"}, "block must be one of 'basic', 'bottleneck', got 'wide'"),
        ({"attention": "cbam"}, "attention must be one of 'none', 'se', got 'cbam'"),
        ({"stem": "patch"}, "stem must be one of 'imagenet', 'cifar', 'deep', got 'patch'"),
        ({"downsample_kernel": 2}, "downsample_kernel must be one of 1, 3, got 2"),
        ({"groups": 4}, "groups=4"),
        ({"se_reduction": 0}, "se_reduction must be a positive int, got 0"),
        ({"depths": (3, 3)}, r"depths=\(3, 3\)"),
        ({"drop_rate": 1.5}, r"drop_rate must be in \[0, 1\), got 1.5"),
        ({"pool_ceil_mode": 1}, "pool_ceil_mode must be True or False, got 1"),
        ({"widths": (64, 32, 16)}, r"shortcut='A'.*widths=\(64, 32, 16\)"),
    ],
)
def test_bad_override_values_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        archs.create_model("resnet20", **overrides)


def test_squeeze_excite_matches_numpy():
    se = layers.SqueezeExcite(8, 4, rngs=_rngs())
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
    w1, b1 = np.asarray(se.fc1.kernel[...])[0, 0], np.asarray(se.fc1.bias[...])
    w2, b2 = np.asarray(se.fc2.kernel[...])[0, 0], np.asarray(se.fc2.bias[...])
    b1, b2 = b1 + 0.1, b2 - 0.2  # non-zero biases, so that they are checked too
    se.fc1.bias[...], se.fc2.bias[...] = b1, b2
    squeeze = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(squeeze @ w1 + b1, 0) @ w2 + b2)))
    np.testing.assert_allclose(se(jnp.asarray(x)), x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_grouped_convolution_matches_per_group_loop():
    conv = layers.conv2d(8, 12, 3, groups=4, rngs=_rngs())
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 8)).astype(np.float32)
    kernel = np.asarray(conv.kernel[...])  # (3, 3, 2, 12): each group sees 2 inputs
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 6, 6, 12), np.float32)
    for g in range(4):
        for o in range(3 * g, 3 * g + 3):
            for i in range(6):
                for j in range(6):
                    window = padded[0, i : i + 3, j : j + 3, 2 * g : 2 * g + 2]
                    expected[0, i, j, o] = np.sum(window * kernel[..., o])
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def _flat_values(model: nnx.Module) -> dict[str, np.ndarray]:
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def test_fc_init_std_draws_the_classifier_from_a_gaussian():
    """Goyal et al. 2017, Sec. 5.1: fc weights from N(0, 0.01), zero bias; 0 keeps PyTorch's
    U(+-1/sqrt(fan_in)) and every other variable is the same either way."""
    tiny = {"num_classes": 1000, "depths": (1, 1, 1)}
    plain = _flat_values(_build("resnet20", **tiny))
    gaussian = _flat_values(_build("resnet20", fc_init_std=0.01, **tiny))
    kernel = gaussian["fc.kernel"]  # 64 x 1000
    assert kernel.std() == pytest.approx(0.01, rel=0.05)
    assert abs(kernel.mean()) < 1e-3 and np.abs(kernel).max() > 0.03  # not uniform in 1/sqrt(3)
    assert not gaussian["fc.bias"].any()
    assert plain["fc.kernel"].std() == pytest.approx(1 / np.sqrt(3 * 64), rel=0.05)
    assert np.abs(plain["fc.bias"]).max() <= 1 / 8 and plain["fc.bias"].any()
    for path, value in plain.items():
        if not path.startswith("fc."):
            np.testing.assert_array_equal(gaussian[path], value, err_msg=path)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "inception_resnet_v2"])
def test_fc_init_std_is_an_override_of_the_families_with_a_plain_classifier(name):
    assert "fc_init_std" in archs.model_overrides(name)
    with pytest.raises(ValueError, match=r"fc_init_std must be a number >= 0, got -0\.01"):
        archs.create_model(name, fc_init_std=-0.01)


# ----- stochastic depth (drop_path_rate) ----------------------------------------------------


def test_drop_path_rates_rise_linearly_over_the_blocks():
    """Huang et al. 2016's linear rule as timm applies it: block i of N drops with rate i/(N-1)."""
    model = summary.abstract_model("resnet20", drop_path_rate=0.4)
    rates = np.concatenate(model.drop_path_rates)
    np.testing.assert_allclose(rates, np.linspace(0, 0.4, 9), atol=1e-12)
    assert [len(stage) for stage in model.drop_path_rates] == [3, 3, 3]
    assert summary.abstract_model("resnet20").drop_path_rngs is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\), got 1.0"),
        ({"drop_path_rate": 0.1, "shortcut": "none"}, "drop_path_rate=0.1 needs residual blocks"),
    ],
)
def test_bad_drop_path_rates_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        archs.create_model("resnet20", **overrides)


@pytest.fixture(scope="module")
def drop_path_nets():
    """resnet20 with depths (1, 3, 2), drop path 0.5: unscanned, and scanned with remat; and
    the same net without drop path. One seed, so the same parameters."""
    small = {"depths": (1, 3, 2), "shortcut": "B"}
    return (
        _build("resnet20", drop_path_rate=0.5, **small),
        _build("resnet20", drop_path_rate=0.5, scan_blocks=True, remat=True, **small),
        _build("resnet20", **small),
    )


def test_drop_path_keeps_the_expectation():
    """E[drop_path(x)] = x: kept examples are scaled by 1 / (1 - p). Over n examples the mean
    of drop_path(1) has standard deviation sqrt(p / (1 - p) / n); the bound is 5 of those."""
    n, p = 20_000, 0.3
    out = np.asarray(layers.drop_path(jnp.ones((n, 2, 2, 1)), p, jax.random.key(0)))
    per_example = out.reshape(n, -1)
    assert set(np.unique(per_example)) <= {0.0, np.float32(1 / (1 - p))}
    assert (per_example == per_example[:, :1]).all()  # whole examples, all or nothing
    assert abs(out.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)
    assert abs((per_example[:, 0] == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_each_block_draws_with_its_own_key():
    key = jax.random.key(0)
    keys, rates = layers.block_drops(key, 3, [0.0, 0.1, 0.2])
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])
    data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys]
    assert len(set(data)) == 3
    assert data[0] == tuple(np.asarray(jax.random.key_data(jax.random.fold_in(key, 3))).ravel())
    assert layers.block_drops(None, 0, [0.1]) is None
    assert layers.block_drops(key, 0, [0.0, 0.0]) is None


def test_a_block_drops_its_residual_branch_per_example(drop_path_nets):
    """Each example's output is relu(identity) (branch dropped) or relu(branch / (1 - p) +
    identity) (kept), with drops as frequent as p."""
    block = nnx.clone(drop_path_nets[2]).layer2[0]  # stride 2, projection shortcut
    block.eval()
    x = jax.random.normal(jax.random.key(1), (64, 8, 8, 16))
    p = 0.5

    @nnx.jit
    def parts(block: resnet.Block, x: jax.Array) -> tuple[jax.Array, ...]:
        drop = (jax.random.key(2), jnp.float32(p))
        return block(x, drop), block.residual(x), block.identity(x), block(x)

    out, branch, identity, undropped = map(np.asarray, parts(block, x))
    dropped = np.maximum(identity, 0)
    kept = np.maximum(branch / (1 - p) + identity, 0)
    is_dropped = np.all(np.isclose(out, dropped, atol=1e-5), axis=(1, 2, 3))
    is_kept = np.all(np.isclose(out, kept, atol=1e-4), axis=(1, 2, 3))
    assert (is_dropped ^ is_kept).all()
    assert 0.2 < is_dropped.mean() < 0.8  # 64 draws of p = 0.5: 5 standard deviations is 0.31
    np.testing.assert_allclose(undropped, np.maximum(branch + identity, 0), rtol=1e-5, atol=1e-5)


@nnx.jit
def _forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def _loss_and_grads(model: nnx.Module, x: jax.Array) -> tuple[jax.Array, dict]:
    def loss(model: nnx.Module) -> jax.Array:
        return jnp.mean(model(x) ** 2)

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    flat = {p: v.get_value() for p, v in nnx.to_flat_state(grads)}
    return value, flat


def test_drop_path_is_the_identity_in_eval_mode(drop_path_nets):
    plain, scanned, without = (nnx.clone(m) for m in drop_path_nets)
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    for net in (plain, scanned, without):
        net.eval()
    expected = _forward(without, x)
    for net in (plain, scanned):
        np.testing.assert_allclose(_forward(net, x), expected, atol=1e-5)


def test_scanned_remat_blocks_drop_as_the_unscanned_ones(drop_path_nets):
    """In training, the scanned stages (each block its own rate and key, under remat) compute
    what the unscanned network computes; and drop path changes it."""
    plain, scanned, without = (nnx.clone(m) for m in drop_path_nets)
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    logits = _forward(plain, x)
    np.testing.assert_allclose(_forward(scanned, x), logits, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_forward(without, x), logits, atol=1e-3)


@pytest.mark.slow
def test_scanned_remat_blocks_have_the_unscanned_gradients_with_drop_path(drop_path_nets):
    plain, scanned, _ = (nnx.clone(m) for m in drop_path_nets)
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    loss, grads = _loss_and_grads(plain, x)
    scanned_loss, scanned_grads = _loss_and_grads(scanned, x)
    np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
    scanned_grads = resnet.unstack_blocks(scanned_grads)
    assert scanned_grads.keys() == grads.keys()
    for path, value in grads.items():
        np.testing.assert_allclose(scanned_grads[path], value, rtol=1e-4, atol=1e-6, err_msg=path)


def test_the_train_step_reseeds_the_drop_path_stream(drop_path_nets):
    """The stream lives on the network, not in the stacked blocks, so `nnx.reseed` (as the train
    step calls it, on every stream `steps.split_model` finds) reaches it: the same key gives
    the same draws, another key others."""
    from archs.training import steps

    _, scanned, _ = (nnx.clone(m) for m in drop_path_nets)
    parts, _, _ = steps.split_model(scanned)
    assert parts.rng_streams
    scanned.train()
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))

    def logits(seed: int) -> np.ndarray:
        nnx.reseed(scanned, **dict.fromkeys(parts.rng_streams, seed))
        return np.asarray(_forward(scanned, x))

    np.testing.assert_array_equal(logits(0), logits(0))
    assert not np.allclose(logits(0), logits(1))


def test_scanned_stages_take_ghost_batch_norm(drop_path_nets):
    """A group size set on a scanned network reaches the stacked blocks' BatchNorms."""
    plain, scanned, _ = (nnx.clone(m) for m in drop_path_nets)
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    for net in (plain, scanned):
        layers.set_bn_group_size(net, 2)
        net.eval()  # drop path off; BatchNorm's batch statistics on:
        net.set_attributes(use_running_average=False)
    out = _forward(plain, x)
    np.testing.assert_allclose(_forward(scanned, x), out, rtol=1e-5, atol=1e-5)
    layers.set_bn_group_size(plain, 0)
    assert not np.allclose(_forward(plain, x), out, atol=1e-3)


# ----- scan_blocks and remat: the same function as the plain net ------------------------------
# Float32 tolerance: the scanned model runs the same operations in the same order, only inside
# a loop, so logits agree to 1e-5 of their scale.

SCAN_SMALL = {"depths": (1, 3, 2)}


def _flat(model: nnx.Module) -> dict:
    """Parameters and BatchNorm statistics by path (the RNG keys are the model's, not blocks')."""
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {p: v.get_value() for p, v in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def scan_pair():
    """A small net without and with scan_blocks; tests use clones."""
    return compile_bench.scan_pair("resnet20", **SCAN_SMALL)


def test_scanned_model_holds_the_plain_models_variables_stacked(scan_pair):
    plain, scanned = scan_pair
    stacked, ours = stack_blocks(_flat(plain)), _flat(scanned)
    assert ours.keys() == stacked.keys()
    assert ours[("layer2", 1, "conv1", "kernel")].shape == (2, 3, 3, 32, 32)
    for path, value in ours.items():
        np.testing.assert_array_equal(value, stacked[path], err_msg=str(path))
    unstacked = unstack_blocks(ours)
    assert unstacked.keys() == _flat(plain).keys()
    path = ("layer2", 2, "conv2", "kernel")
    np.testing.assert_array_equal(unstacked[path], _flat(plain)[path])


@pytest.mark.parametrize("name", ["resnet50", "seresnet50"])
def test_scan_blocks_keeps_the_parameter_count(name):
    assert count_params(abstract_model(name, scan_blocks=True)) == count_params(
        abstract_model(name)
    )


def test_scan_blocks_same_outputs_and_batchnorm_updates(scan_pair):
    plain, scanned = (nnx.clone(m) for m in scan_pair)
    diff = compile_bench.scan_output_difference(plain, scanned, 8)
    for mode in ("eval", "train"):
        assert diff[f"{mode}_max_abs_diff"] <= 1e-5 * diff[f"{mode}_max_abs_logit"], diff
    stats = stack_blocks(_flat(plain))
    assert not np.allclose(stats[("layer2", 1, "bn1", "mean")], 0)  # train mode updated them
    for path, value in _flat(scanned).items():
        np.testing.assert_allclose(value, stats[path], atol=1e-6, err_msg=str(path))


REMAT = re.compile(r"\b(remat\d*|checkpoint)\[")  # jax.checkpoint's primitive, by version


def _grads(**overrides) -> tuple[dict, str]:
    """Flat gradients (unscanned layout) of a tiny net's loss, and the jaxpr computing them."""
    model = archs.create_model("resnet20", rngs=nnx.Rngs(0), depths=(2, 2, 2), **overrides)
    model.train()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
    labels = jnp.array([1, 2])

    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s: nnx.grad(loss)(nnx.merge(graphdef, s)))(state)
    grads = nnx.jit(nnx.grad(loss))(model)
    flat = {p: v.get_value() for p, v in nnx.to_flat_state(grads)}
    return (unstack_blocks(flat) if overrides.get("scan_blocks") else flat), str(jaxpr)


@pytest.mark.slow
def test_remat_same_gradients():
    """remat with scan_blocks: each stage's first block is rematerialized alone, the others
    inside the scan, so both paths are covered."""
    (plain, plain_jaxpr), (other, jaxpr) = _grads(), _grads(remat=True, scan_blocks=True)
    assert REMAT.search(jaxpr) and not REMAT.search(plain_jaxpr)  # remat is really on
    assert other.keys() == plain.keys()
    for path, value in plain.items():
        np.testing.assert_allclose(other[path], value, rtol=1e-5, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("key", ["scan_blocks", "remat"])
def test_speed_overrides_must_be_bools(key):
    with pytest.raises(ValueError, match=f"{key} must be True or False, got 1"):
        abstract_model("resnet18", **{key: 1})


def test_block_barrier_resolves_by_backend_and_is_checked():
    assert resnet.resolve_block_barrier("auto", "cpu") is True
    assert resnet.resolve_block_barrier("auto", "gpu") is False
    assert resnet.resolve_block_barrier(False, "cpu") is False
    on_cpu = jax.default_backend() == "cpu"
    assert summary.abstract_model("resnet20").layer1[0].barrier == on_cpu
    assert not summary.abstract_model("resnet20", block_barrier=False).layer1[0].barrier
    assert not summary.abstract_model("resnet20", scan_stages=True, scan_blocks=True).scan_stages
    with pytest.raises(ValueError, match="block_barrier must be 'auto', True or False, got 'on'"):
        archs.create_model("resnet20", block_barrier="on")


@pytest.mark.slow
def test_block_barriers_train_as_without(drop_path_nets):
    """The barrier is the identity: a training step's loss, gradients and BatchNorm statistics
    are those without it (float32 tolerance of the scan_blocks tests)."""
    plain = nnx.clone(drop_path_nets[0])
    cut = _build("resnet20", drop_path_rate=0.5, depths=(1, 3, 2), shortcut="B", block_barrier=True)
    plain.set_attributes(barrier=False)
    _assert_trains_as(cut, plain)


def _assert_trains_as(net: nnx.Module, plain: nnx.Module) -> None:
    """One training forward and backward of `net` gives `plain`'s loss, gradients and updated
    BatchNorm statistics."""
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    for model in (plain, net):
        model.train()
    loss, grads = _loss_and_grads(plain, x)
    net_loss, net_grads = _loss_and_grads(net, x)
    np.testing.assert_allclose(net_loss, loss, rtol=1e-5)
    assert net_grads.keys() == grads.keys()
    for path, value in grads.items():
        np.testing.assert_allclose(net_grads[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
    for path, value in _batch_stats(plain).items():
        np.testing.assert_allclose(_batch_stats(net)[path], value, rtol=1e-5, atol=1e-6)


def _batch_stats(model: nnx.Module) -> dict:
    return {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


@pytest.mark.slow
def test_scanned_stages_train_as_the_unrolled_ones(drop_path_nets):
    """scan_stages (blocks scanned over parameters stacked at call time) keeps the unrolled
    layout, and a training forward and backward with drop path gives the unrolled loss,
    gradients and updated BatchNorm statistics (float32 tolerance of the scan_blocks tests)."""
    plain = nnx.clone(drop_path_nets[0])
    scanned = _build(
        "resnet20", drop_path_rate=0.5, depths=(1, 3, 2), shortcut="B", scan_stages=True
    )
    assert _param_shapes(scanned) == _param_shapes(plain)
    assert _batch_stats(scanned).keys() == _batch_stats(plain).keys()
    _assert_trains_as(scanned, plain)
    initial = _batch_stats(drop_path_nets[0])
    for path, value in _batch_stats(plain).items():
        assert not np.allclose(value, initial[path]), path  # every block's statistics moved

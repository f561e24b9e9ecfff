"""The generic ResNet builder: counts and MACs against references, blocks against naive maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import archs
from archs import layers, resnet, summary

# Parameter counts: torchvision 0.29 / timm 1.0 model builders, and the papers' nets (issue #2).
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


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count_and_macs_match_reference(name):
    model = summary.abstract_model(name)
    info = archs.model_info(name)
    assert summary.count_params(model) == EXPECTED_PARAMS[name] == info.reference_params
    macs = summary.count_macs(model, info.image_size) / 1e9
    assert macs == pytest.approx(info.reference_gmacs, rel=0.01)


def test_stride_placement_changes_macs_not_params():
    # torchvision's docs: ResNet-50 v1.5 4.09 GMACs; v1 (stride on the 1x1) 3.86 (issue #2).
    v1 = summary.abstract_model("resnet50", stride_in="1x1")
    v15 = summary.abstract_model("resnet50")
    assert summary.count_params(v1) == summary.count_params(v15)
    assert summary.count_macs(v1, 224) / 1e9 == pytest.approx(3.86, rel=0.01)
    assert summary.count_macs(v15, 224) / 1e9 == pytest.approx(4.09, rel=0.01)


def _param_shapes(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(map(str, path)): tuple(v.shape) for path, v in flat}


def test_se_override_adds_only_se_parameters():
    base = _param_shapes(summary.abstract_model("resnet50"))
    se = _param_shapes(summary.abstract_model("resnet50", attention="se", se_reduction=8))
    added = set(se) - set(base)
    assert set(base) <= set(se)
    assert all(base[k] == se[k] for k in base)
    assert added and all(".se.fc" in k for k in added)
    # One SE per block, hidden width channels/8: layer4's blocks have 2048 -> 256 -> 2048.
    assert se["layer4.0.se.fc1.kernel"] == (1, 1, 2048, 256)
    assert sum(".se.fc1.kernel" in k for k in added) == 16


def test_shortcut_options_change_only_projections():
    a = _param_shapes(summary.abstract_model("resnet20"))
    b = _param_shapes(summary.abstract_model("resnet20", shortcut="B"))
    c = _param_shapes(summary.abstract_model("resnet20", shortcut="C"))
    assert not any("downsample" in k for k in a)
    # B projects at the two stage transitions; C on all nine blocks.
    assert {k.split(".downsample")[0] for k in b if "downsample" in k} == {"layer2.0", "layer3.0"}
    assert len({k.split(".downsample")[0] for k in c if "downsample" in k}) == 9
    assert {k: v for k, v in b.items() if "downsample" not in k} == a


def test_zero_init_residual_zeroes_last_bn_scale():
    model = archs.create_model("resnet18", zero_init_residual=True)
    assert float(jnp.abs(model.layer1[0].bn2.scale.value).max()) == 0.0
    assert float(jnp.abs(model.layer1[0].bn1.scale.value).min()) == 1.0


def test_bad_override_values_name_the_value():
    with pytest.raises(ValueError, match="shortcut='D'"):
        archs.create_model("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="stride_in='2x2'"):
        archs.create_model("resnet50", stride_in="2x2")
    with pytest.raises(ValueError, match="groups"):
        archs.create_model("resnet18", groups=4)


@pytest.mark.parametrize(
    ("name", "overrides", "size"),
    [
        ("resnet20", {}, 32),
        ("plain20", {"depths": (1, 1, 1)}, 16),
        ("resnet18", {"depths": (1, 1, 1, 1)}, 32),
        ("resnext29_8x64d", {"depths": (1, 1, 1), "widths": (8, 16, 32)}, 16),
        ("seresnet50", {"depths": (1, 1, 1, 1), "widths": (8, 16, 32, 64)}, 32),
        (
            "senet154",
            {
                "depths": (1, 1, 1, 1),
                "widths": (16, 16, 32, 32),
                "groups": 4,
                "width_per_group": 16,
            },
            32,
        ),
    ],
)
def test_forward_train_and_eval(name, overrides, size):
    model = archs.create_model(name, num_classes=7, **overrides)
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    forward = nnx.jit(lambda net, x: (net(x, return_aux=True), net.features(x)))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        (logits, aux), feats = forward(model, x)
        assert logits.shape == (2, 7) and aux == ()
        assert bool(jnp.isfinite(logits).all())
    stages = len(overrides.get("depths", (3, 3, 3)))  # resnet20: three stages
    assert set(feats) == {"stem", *[f"stage{i}" for i in range(1, stages + 1)], "pre_logits"}


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = resnet.Block(
        4,
        8,
        2,
        block="basic",
        groups=1,
        width_per_group=64,
        reduce_first=1,
        stride_in="3x3",
        shortcut="A",
        attention="none",
        se_reduction=16,
        zero_init_residual=False,
        downsample_kernel=1,
        dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    x = np.arange(2 * 6 * 6 * 4, dtype=np.float32).reshape(2, 6, 6, 4)
    out = np.asarray(block.identity(jnp.asarray(x)))
    assert out.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(out[..., 2:6], x[:, ::2, ::2, :])
    assert not out[..., :2].any() and not out[..., 6:].any()


def test_squeeze_excite_matches_numpy():
    se = layers.SqueezeExcite(8, 4, rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
    w1, b1 = np.asarray(se.fc1.kernel.value)[0, 0], np.asarray(se.fc1.bias.value)
    w2, b2 = np.asarray(se.fc2.kernel.value)[0, 0], np.asarray(se.fc2.bias.value)
    squeeze = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(squeeze @ w1 + b1, 0) @ w2 + b2)))
    np.testing.assert_allclose(se(jnp.asarray(x)), x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_grouped_convolution_matches_per_group_loop():
    conv = layers.conv2d(8, 12, 3, groups=4, rngs=nnx.Rngs(2))
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 8)).astype(np.float32)
    kernel = np.asarray(conv.kernel.value)  # (3, 3, 2, 12): each group sees 2 inputs
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 6, 6, 12), np.float32)
    for g in range(4):
        for o in range(3 * g, 3 * g + 3):
            for i in range(6):
                for j in range(6):
                    window = padded[0, i : i + 3, j : j + 3, 2 * g : 2 * g + 2]
                    expected[0, i, j, o] = np.sum(window * kernel[..., o])
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)

"""GoogLeNet (`googlenet`, `inception_v1`) and Inception-ResNet-v2: sizes, MACs, forward passes.

Reference numbers and where they come from:
- googlenet: 13,004,888 params with both aux heads, 6,624,904 without, 1.498376 GMACs at 224
  (torchvision 0.29.1: `sum(p.numel())` of `googlenet(aux_logits=True/False)`,
  FlopCounterMode / 2 in eval mode).
- inception_v1: 6,998,552 params without aux heads, 13,378,280 with both: Table 1 of Szegedy et
  al. 2015 with a bias per conv/linear (6,990,272 weights + 8,280 biases; the aux heads of
  Sec. 5, after 4a and 4d, add 128x512 + 2048x1024 + 1024x1000 and 128x528 + 2048x1024 +
  1024x1000 weights and 2 x 2,152 biases); GMACs from `references.googlenet_paper_rows()`
  (Table 1, computed without our modules).
- inception_resnet_v2: 55,843,464 params, 13.155794 GMACs at 299 (timm 1.0.31, same method).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import archs
from archs import googlenet, inception_resnet, layers, references
from archs.summary import _jaxpr_macs, abstract_model, count_macs, count_params


@pytest.mark.parametrize(
    ("name", "overrides", "params"),
    [
        ("googlenet", {}, 13_004_888),
        ("googlenet", {"aux_logits": False}, 6_624_904),
        ("inception_v1", {}, 13_378_280),
        ("inception_v1", {"aux_logits": False}, 6_998_552),
        ("inception_resnet_v2", {}, 55_843_464),
    ],
)
def test_param_counts(name, overrides, params):
    assert count_params(abstract_model(name, **overrides)) == params
    if not overrides:
        assert archs.model_info(name).reference_params == params


@pytest.mark.parametrize(
    ("name", "gmacs"),
    [
        ("googlenet", 1.498376),
        ("inception_v1", references.paper_macs(references.googlenet_paper_rows())),
        ("inception_resnet_v2", 13.155794),
    ],
)
def test_gmacs_match_the_reference(name, gmacs):
    info = archs.model_info(name)
    assert info.reference_gmacs == pytest.approx(gmacs)
    measured = count_macs(abstract_model(name), info.image_size) / 1e9
    assert measured == pytest.approx(gmacs, rel=0.01)


def test_paper_table_macs_are_about_the_papers_1_5_billion():
    # Table 1's "ops" column adds up to 1.586G; the paper rounds to "1.5 billion".
    assert references.paper_macs(references.googlenet_paper_rows()) == pytest.approx(
        1.586, rel=0.01
    )


def test_model_info():
    for name, structure in (("googlenet", "torchvision"), ("inception_v1", "paper")):
        info = archs.model_info(name)
        assert (info.family, info.aux_weight, info.structure) == ("googlenet", 0.3, structure)
    info = archs.model_info("inception_resnet_v2")
    assert (info.family, info.structure, info.image_size) == ("inception_resnet", "timm", 299)
    assert (info.mean, info.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert (info.crop_pct, info.interpolation, info.aux_weight) == (0.8975, "bicubic", 0.0)


def materialize(name: str, seed: int = 0, **overrides) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph and a state of numpy-drawn weights (N(0, 1/fan_in) kernels, unit BN
    scales and variances, zeros elsewhere): a real state without compiling every initializer,
    which on 2 CPU cores takes minutes. Initializers are tested on single layers below."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(name, **overrides))

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if path[-1].key == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) / math.sqrt(fan_in)).astype(np.float32)
        return np.full(leaf.shape, path[-1].key in ("scale", "var"), leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return graphdef, state


@pytest.mark.parametrize(
    ("name", "size", "num_aux"),
    [
        ("googlenet", 64, 2),
        # The paper's aux heads pool 5x5/3 to the 4x4 their fc1 takes: 224x224 input only.
        ("inception_v1", 224, 2),
        # timm's smallest input: 1x1 after mixed_7a.
        pytest.param("inception_resnet_v2", 75, 0, marks=pytest.mark.slow),
    ],
)
def test_forward_train_and_eval(name, size, num_aux):
    graphdef, state = materialize(name, num_classes=7)

    @jax.jit
    def train_then_eval(state, x):
        model = nnx.merge(graphdef, state)
        train = model(x, return_aux=True)
        model.eval()
        return train, model(x, return_aux=True), model.features(x)

    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
    (logits, aux), (eval_logits, eval_aux), feats = train_then_eval(state, x)
    assert logits.shape == eval_logits.shape == (2, 7)
    assert len(aux) == num_aux and all(a.shape == (2, 7) for a in aux)
    assert eval_aux == ()
    assert all(bool(jnp.isfinite(a).all()) for a in (logits, eval_logits, *aux))
    # Batch statistics in training mode, running statistics in eval mode.
    assert not np.allclose(logits, eval_logits)
    assert {"stem", "stage1", "stage2", "stage3"} <= set(feats)
    assert feats["pre_logits"].shape[0] == 2


def test_aux_heads_can_be_left_out():
    model = abstract_model("googlenet", aux_logits=False)
    assert model.aux1 is None and model.aux2 is None
    assert model.aux_logits({}) == ()


def torch_max_pool(x: np.ndarray, k: int, s: int, p: int, ceil_mode: bool) -> np.ndarray:
    """PyTorch's MaxPool2d on one (H, W) plane, window by window. Output size (aten's
    pooling_output_shape): floor or ceil of (n + 2p - k) / s, plus 1; in ceil mode a last
    window starting at or beyond n + p (inside the right padding) is dropped."""

    def out_size(n: int) -> int:
        steps = -(-(n + 2 * p - k) // s) if ceil_mode else (n + 2 * p - k) // s
        out = steps + 1
        if ceil_mode and (out - 1) * s >= n + p:
            out -= 1
        return out

    oh, ow = out_size(x.shape[0]), out_size(x.shape[1])
    out = np.empty((oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            rows = range(max(i * s - p, 0), min(i * s - p + k, x.shape[0]))
            cols = range(max(j * s - p, 0), min(j * s - p + k, x.shape[1]))
            out[i, j] = x[np.ix_(rows, cols)].max()
    return out


@pytest.mark.parametrize(("k", "s", "p"), [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_max_pool_follows_pytorch(k, s, p, ceil_mode):
    rng = np.random.default_rng(k * 10 + s + p)
    for h, w in ((5, 6), (7, 8), (9, 14), (13, 11)):
        x = rng.normal(size=(h, w)).astype(np.float32)
        ours = layers.max_pool(jnp.asarray(x)[None, :, :, None], k, s, p, ceil_mode=ceil_mode)
        np.testing.assert_array_equal(ours[0, :, :, 0], torch_max_pool(x, k, s, p, ceil_mode))


def test_googlenet_spatial_sizes_are_torchvisions():
    # torchvision 0.29.1's GoogLeNet (forward hooks on maxpool2, inception3b, 4a, 4e, 5b):
    # 28, 28, 14, 14, 7 at 224; 22, 22, 11, 11, 6 at 179, where ceil mode matters.
    graphdef, state = nnx.split(abstract_model("googlenet"))

    def feats(state, x):
        net = nnx.merge(graphdef, state)
        net.eval()
        return net.features(x)

    names = ("stem", "stage1", "inception4a", "stage2", "stage3")
    for size, expected in ((224, (28, 28, 14, 14, 7)), (179, (22, 22, 11, 11, 6))):
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        shapes = jax.eval_shape(feats, state, x)
        assert tuple(shapes[n].shape[1] for n in names) == expected


def test_avg_pool_without_padding_in_the_count():
    # timm's mixed_5b pools with count_include_pad=False: every window of ones averages to 1.
    ones = jnp.ones((1, 5, 5, 1))
    np.testing.assert_allclose(layers.avg_pool(ones, 3, 1, 1, count_include_pad=False), 1.0)
    assert float(layers.avg_pool(ones, 3, 1, 1)[0, 0, 0, 0]) == pytest.approx(4 / 9)


def branch_macs(branch: nnx.Module, height: int, channels: int) -> int:
    graphdef, state = nnx.split(branch)

    def forward(state, x):
        return layers.apply_in_order(nnx.merge(graphdef, state), x)

    x = jax.ShapeDtypeStruct((1, height, height, channels), jnp.float32)
    return _jaxpr_macs(jax.make_jaxpr(forward)(state, x).jaxpr)


def test_removing_1x1_reductions_changes_3a_5x5_branch_macs_as_the_paper_says():
    # Inception 3a sees 28x28x192; its 5x5 branch has 16 reductions and 32 outputs.
    positions = 28 * 28
    with_reduction = abstract_model("inception_v1").inception3a.branch3
    without = abstract_model("inception_v1", reduction_1x1=False).inception3a.branch3
    assert branch_macs(with_reduction, 28, 192) == positions * (16 * 192 + 25 * 32 * 16)
    assert branch_macs(without, 28, 192) == positions * 25 * 32 * 192


def test_transform_input_maps_imagenet_normalisation_to_half_scaling():
    x01 = np.random.default_rng(0).uniform(size=(1, 4, 4, 3)).astype(np.float32)
    info = archs.model_info("googlenet")
    mean, std = np.array(info.mean), np.array(info.std)
    normalised = jnp.asarray((x01 - mean) / std, jnp.float32)
    np.testing.assert_allclose(googlenet.transform_input(normalised), (x01 - 0.5) / 0.5, atol=1e-6)


def test_initialisation_follows_the_references():
    rngs = nnx.Rngs(0)
    tv = googlenet.conv_unit(googlenet.TORCHVISION, jnp.float32, rngs)(64, 64, 3)
    assert tv.conv.bias is None and tv.bn.epsilon == 1e-3
    assert float(jnp.std(tv.conv.kernel[...])) == pytest.approx(0.01, rel=0.05)
    paper = googlenet.conv_unit(googlenet.PAPER, jnp.float32, rngs)(64, 64, 3)
    assert paper.bn is None
    np.testing.assert_array_equal(paper.conv.bias[...], np.float32(0.2))
    assert float(jnp.abs(paper.conv.kernel[...]).max()) <= math.sqrt(3 / (9 * 64))


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("googlenet", {"aux_logits": "yes"}, "aux_logits must be True or False, got 'yes'"),
        ("googlenet", {"transform_input": 1}, "transform_input must be True or False, got 1"),
        ("inception_v1", {"reduction_1x1": None}, "reduction_1x1 must be True or False"),
        ("inception_v1", {"drop_rate": 1.0}, "drop_rate must be in [0, 1), got 1.0"),
        ("googlenet", {"aux_drop_rate": -0.1}, "aux_drop_rate must be in [0, 1), got -0.1"),
        ("inception_resnet_v2", {"drop_rate": "0.2"}, "drop_rate must be a number, got '0.2'"),
    ],
)
def test_bad_override_values_are_refused(name, overrides, message):
    with pytest.raises(ValueError) as err:
        archs.create_model(name, **overrides)
    assert message in str(err.value)


def test_inception_resnet_v2_drop_path_over_its_40_residual_blocks(monkeypatch):
    """Rates rise linearly over repeat (10), repeat_1 (20), repeat_2 (9) and block8; each of the
    40 residual blocks receives its own (key, rate) in training and nothing in eval mode."""
    model = abstract_model("inception_resnet_v2", drop_path_rate=0.2)
    np.testing.assert_allclose(model.drop_path_rates, np.linspace(0, 0.2, 40), atol=1e-12)
    received = []
    call = inception_resnet.ResidualBlock.__call__

    def recording(block, x, drop=None):
        received.append(drop)
        return call(block, x, drop)

    monkeypatch.setattr(inception_resnet.ResidualBlock, "__call__", recording)
    graphdef, state = nnx.split(model)

    def run(state, x, train):
        net = nnx.merge(graphdef, state)
        net.train() if train else net.eval()
        return net(x)

    x = jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)
    for train in (True, False):
        received.clear()
        assert jax.eval_shape(functools.partial(run, train=train), state, x).shape == (2, 1000)
        assert len(received) == 40
        assert all(drop is not None for drop in received) if train else received == [None] * 40

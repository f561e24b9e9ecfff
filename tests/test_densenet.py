"""DenseNet: exact parameter counts, MACs, forward passes, features, overrides, module paths.

Reference numbers: torchvision 0.29 model builders for densenet121/161/169/201 (parameters,
and GMACs as FlopCounterMode / 2; archs/references.py); Huang et al. 2017 Table 1
(DenseNet-264, k=32, blocks 6-12-64-48) and Table 2 / Sec. 3 (DenseNet-BC L=100 k=12 on
CIFAR-10) for the paper's nets, whose GMACs `references.densenet_paper_gmacs` computes from
the paper's layer tables. Checkpoint key shapes: tests/data/reference_state_shapes.json
(torchvision 0.29.1 `densenet121().state_dict()`).

Forward passes use models materialised from their abstract shapes with numpy weights: eager
initialisation compiles a random-number program per distinct kernel shape (DenseNet has
hundreds), far too slow for a unit test on CPU. Initialisation is checked separately.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import archs
from archs import references
from archs.summary import abstract_model, count_macs, count_params

# name: (trainable parameters, source)
REFERENCE_PARAMS = {
    "densenet121": (7_978_856, "torchvision 0.29 densenet121"),
    "densenet161": (28_681_000, "torchvision 0.29 densenet161"),
    "densenet169": (14_149_480, "torchvision 0.29 densenet169"),
    "densenet201": (20_013_928, "torchvision 0.29 densenet201"),
    "densenet264": (33_337_704, "Huang et al. 2017, Table 1, k=32, blocks 6-12-64-48"),
    "densenet_bc_100_12": (769_162, "Huang et al. 2017, Table 2 (0.8M), DenseNet-BC L=100 k=12"),
}

REFERENCE_SHAPES = json.loads(
    (pathlib.Path(__file__).parent / "data" / "reference_state_shapes.json").read_text()
)


def expected_params(
    block_config: tuple[int, ...],
    k: int,
    init: int,
    *,
    stem: str = "imagenet",
    num_classes: int = 1000,
    bn_size: int = 4,
    compression: float = 0.5,
) -> int:
    """DenseNet-BC parameters in closed form, block by block (no conv biases, BN 2 per channel).

    A block of L layers on c input channels: layer j has BN(c + jk), 1x1 conv (c + jk) -> bk,
    BN(bk), 3x3 conv bk -> k, so sum_j [(2 + bk)(c + jk) + 2bk + 9bk^2].
    """
    b = bn_size * k
    total = 3 * 49 * init + 2 * init if stem == "imagenet" else 3 * 9 * init
    c = init
    for i, n in enumerate(block_config):
        total += (2 + b) * (n * c + k * n * (n - 1) // 2) + n * (2 * b + 9 * b * k)
        c += n * k
        if i < len(block_config) - 1:
            reduced = math.floor(compression * c)
            total += 2 * c + c * reduced
            c = reduced
    return total + 2 * c + c * num_classes + num_classes


def materialize(name: str, seed: int = 0, **overrides) -> nnx.Module:
    """The model with He-normal kernels, zero biases and identity BatchNorm, from numpy."""
    graphdef, state = nnx.split(abstract_model(name, **overrides))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        name = path[-1].key
        if name == "kernel":
            std = math.sqrt(2 / math.prod(leaf.shape[:-1]))
            return rng.normal(0, std, leaf.shape).astype(leaf.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    """model(x) compiled, with the model's BatchNorm statistics and RNG counts updated."""
    graphdef, state = nnx.split(model)

    def pure(state, x):
        net = nnx.merge(graphdef, state)
        return net(x), nnx.state(net)

    logits, state = jax.jit(pure)(state, x)
    nnx.update(model, state)
    return logits


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_params_and_gmacs_match_the_reference(name):
    params, _source = REFERENCE_PARAMS[name]
    info = archs.model_info(name)
    model = abstract_model(name)
    assert count_params(model) == params == info.reference_params
    assert count_macs(model, info.image_size) / 1e9 == pytest.approx(info.reference_gmacs, rel=0.01)


@pytest.mark.parametrize(
    ("blocks", "k", "tv_name"),
    [((6, 12, 24, 16), 32, "densenet121"), ((6, 12, 36, 24), 48, "densenet161")],
)
def test_paper_gmacs_formula_reproduces_torchvision(blocks, k, tv_name):
    # The closed form behind densenet264's reference, checked against torchvision's counts.
    gmacs = references.densenet_paper_gmacs(blocks, k, 1000)
    assert gmacs == pytest.approx(references.REFERENCES[tv_name].gmacs, rel=1e-5)


@pytest.mark.parametrize(
    ("name", "size", "classes"),
    [
        pytest.param("densenet121", 64, 1000, marks=pytest.mark.slow),
        ("densenet_bc_100_12", 32, 10),
    ],
)
def test_forward_train_and_eval_at_small_size(name, size, classes):
    model = materialize(name)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
    train_logits = forward(model, x)
    assert float(jnp.abs(model.norm5.mean[...]).sum()) > 0  # train mode updated statistics
    model.eval()
    eval_logits = forward(model, x)
    for logits in (train_logits, eval_logits):
        assert logits.shape == (2, classes)
        assert bool(jnp.isfinite(logits).all())
    assert not np.allclose(train_logits, eval_logits)  # batch vs running statistics


@pytest.mark.parametrize(
    ("name", "size", "shapes"),
    [
        (
            "densenet121",
            224,
            {
                "stem": (56, 56, 64),
                "stage1": (56, 56, 256),
                "stage2": (28, 28, 512),
                "stage3": (14, 14, 1024),
                "stage4": (7, 7, 1024),
            },
        ),
        (
            "densenet_bc_100_12",
            32,
            {
                "stem": (32, 32, 24),
                "stage1": (32, 32, 216),
                "stage2": (16, 16, 300),
                "stage3": (8, 8, 342),
            },
        ),
    ],
)
def test_features_keys_and_shapes(name, size, shapes):
    graphdef, state = nnx.split(abstract_model(name))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state, x)
    assert set(feats) == {*shapes, "pre_logits"}  # eval_shape returns the dict's keys sorted
    assert {k: v.shape[1:] for k, v in feats.items() if k != "pre_logits"} == shapes
    assert feats["pre_logits"].shape == (1, next(reversed(shapes.values()))[-1])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"growth_rate": 16},
        {"compression": 0.7},
        {"block_config": (2, 3, 4)},
        {"bn_size": 2, "num_init_features": 40},
        {"growth_rate": 12, "block_config": (5, 5), "compression": 1.0, "stem": "cifar"},
    ],
)
def test_overrides_change_params_as_the_closed_form_says(overrides):
    kwargs = {"block_config": (6, 12, 24, 16), "growth_rate": 32, "stem": "imagenet"} | overrides
    k = kwargs.pop("growth_rate")
    init = kwargs.pop("num_init_features", 2 * k)
    blocks = kwargs.pop("block_config")
    expected = expected_params(blocks, k, init, **kwargs)
    assert count_params(abstract_model("densenet121", **overrides)) == expected


def test_num_classes_changes_only_the_classifier():
    assert count_params(abstract_model("densenet_bc_100_12", num_classes=100)) == expected_params(
        (16, 16, 16), 12, 24, stem="cifar", num_classes=100
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"stem": "deep"}, "stem must be one of 'imagenet', 'cifar', got 'deep'"),
        ({"compression": 0.0}, r"compression must be in \(0, 1\], got 0.0"),
        ({"growth_rate": 0}, "growth_rate must be a positive int, got 0"),
        ({"bn_size": 2.5}, "bn_size must be an int, got 2.5"),
        ({"block_config": ()}, "block_config must hold at least one block"),
        ({"block_config": (6, 0)}, r"block_config \(6, 0\) must be a positive int, got 0"),
        ({"drop_rate": 1.0}, r"drop_rate must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_override_values_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        archs.create_model("densenet121", **override)


def test_module_paths_are_torchvision_keys_without_the_features_prefix():
    model = abstract_model("densenet121")
    torch_names = {
        "kernel": "weight",
        "scale": "weight",
        "mean": "running_mean",
        "var": "running_var",
    }
    ours = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        module = ".".join(map(str, path[:-1]))
        prefix = module if module.startswith("classifier") else f"features.{module}"
        shape = variable.shape
        if path[-1] == "kernel":  # HWIO -> OIHW, (in, out) -> (out, in)
            shape = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]
        ours[f"{prefix}.{torch_names.get(path[-1], path[-1])}"] = tuple(shape)
    theirs = {
        key: tuple(shape)
        for key, shape in REFERENCE_SHAPES["densenet121"].items()
        if not key.endswith("num_batches_tracked")
    }
    assert ours == theirs


def test_init_follows_torchvision():
    model = archs.create_model("densenet_bc_100_12", growth_rate=16, block_config=(1,))
    layer = model.denseblock1.denselayer1
    # kaiming_normal_ with fan-in: std sqrt(2 / (3 * 3 * 64)); fan-out would give twice that.
    kernel = np.asarray(layer.conv2.kernel[...])
    assert kernel.shape == (3, 3, 64, 16)
    assert kernel.std() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert abs(kernel.mean()) < 0.05 * kernel.std()
    assert layer.conv2.bias is None
    np.testing.assert_array_equal(layer.norm1.scale[...], np.ones(32))
    np.testing.assert_array_equal(layer.norm1.bias[...], np.zeros(32))
    np.testing.assert_array_equal(model.classifier.bias[...], np.zeros(10))
    # The classifier's weight keeps PyTorch's default U(-1/sqrt(48), 1/sqrt(48)).
    weight = np.asarray(model.classifier.kernel[...])
    assert 0.5 / math.sqrt(48) < np.abs(weight).max() <= 1 / math.sqrt(48)


def test_dropout_acts_in_train_mode_only():
    model = materialize("densenet_bc_100_12", block_config=(2,), drop_rate=0.5)
    x = jnp.ones((1, 8, 8, 3))
    assert not np.allclose(forward(model, x), forward(model, x))
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_registry_entries():
    info = archs.model_info("densenet_bc_100_12")
    assert (info.image_size, info.num_classes, info.crop_pct) == (32, 10, 1.0)
    assert (info.mean, info.std, info.structure) == (
        archs.registry.CIFAR10_MEAN,
        archs.registry.CIFAR10_STD,
        "paper",
    )
    assert archs.model_info("densenet264").structure == "paper"
    assert archs.model_info("densenet121").structure == "torchvision"
    assert archs.model_overrides("densenet121") == [
        "block_config",
        "bn_size",
        "compression",
        "drop_rate",
        "fc_init_std",
        "growth_rate",
        "num_init_features",
        "stem",
    ]

"""AlexNet, ZFNet and VGG: parameter counts and MACs against the references, layer order,
map sizes, LRN, grouped convs, adaptive pooling, init, overrides, and real forward passes.

Where the numbers come from: torchvision counts are torchvision 0.29's builders (sum of
`p.numel()`; GMACs FlopCounterMode / 2, as archs/references.py records); the paper nets'
counts are derived from the papers' layer tables (Krizhevsky et al. 2012 Fig. 2; Zeiler &
Fergus 2014 Fig. 3; Simonyan & Zisserman 2015 Table 1); ZFNet's 1.17 GMACs is
archs/references.py's (Fig. 3, dense, 224x224); alexnet_bn's is derived in its docstring row below.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import archs
from archs import layers
from archs.summary import abstract_model, count_macs, count_params

PARAMS = {
    "alexnet": 61_100_840,  # torchvision
    "alexnet_lrn": 60_965_224,  # Krizhevsky et al. Fig. 2 with two groups
    # alexnet_lrn + 2 x (96+256+384+384+256) BatchNorm scale/shift - the 1,376 conv biases.
    "alexnet_bn": 60_966_600,
    "zfnet": 62_357_608,  # Zeiler & Fergus Fig. 3
    "vgg11": 132_863_336,  # torchvision
    "vgg11_lrn": 132_863_336,  # Simonyan & Zisserman Table 1, A-LRN: LRN has no parameters
    "vgg13": 133_047_848,  # torchvision
    "vgg16_c": 133_638_952,  # Simonyan & Zisserman Table 1, config C
    "vgg16": 138_357_544,  # torchvision
    "vgg19": 143_667_240,  # torchvision
    "vgg11_bn": 132_868_840,  # torchvision
    "vgg13_bn": 133_053_736,  # torchvision
    "vgg16_bn": 138_365_992,  # torchvision
    "vgg19_bn": 143_678_248,  # torchvision
}


def model_macs(name: str, image_size: int | None = None, **overrides) -> int:
    size = image_size or archs.model_info(name).image_size
    return count_macs(abstract_model(name, **overrides), size)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_and_gmacs_match_the_references(name):
    info = archs.model_info(name)
    model = abstract_model(name)
    assert count_params(model) == PARAMS[name] == info.reference_params
    assert info.reference_gmacs is not None
    gmacs = count_macs(model, info.image_size) / 1e9
    assert gmacs == pytest.approx(info.reference_gmacs, rel=0.01)


def test_zfnet_gmacs_agree_with_the_reference():
    assert model_macs("zfnet") / 1e9 == pytest.approx(1.17, rel=0.01)


LETTERS = {
    nnx.Conv: "C",
    layers.BatchNorm: "B",
    layers.LocalResponseNorm: "L",
    layers.MaxPool: "P",
    nnx.Dropout: "D",
    nnx.Linear: "F",
}


def signature(layer_list) -> str:
    """One letter per layer; R is the ReLU."""
    return "".join("R" if f is jax.nn.relu else LETTERS[type(f)] for f in layer_list)


@pytest.mark.parametrize(
    "name, features, classifier",
    [
        # torchvision.models.AlexNet / VGG: the index of each letter is the nn.Sequential index.
        ("alexnet", "CRPCRPCRCRCRP", "DFRDFRF"),
        ("vgg11_bn", "CBRPCBRPCBRCBRPCBRCBRPCBRCBRP", "FRDFRDF"),
        # Krizhevsky et al. Sec. 3.3-3.4: LRN after the ReLU of conv1 and conv2, then the pool.
        ("alexnet_lrn", "CRLPCRLPCRCRCRP", "FRDFRDF"),
        ("alexnet_bn", "CBRPCBRPCBRCBRCBRP", "FRDFRDF"),
        ("zfnet", "CRLPCRLPCRCRCRP", "FRDFRDF"),
        # Simonyan & Zisserman Table 1, A-LRN: LRN after the first conv only.
        ("vgg11_lrn", "CRLPCRPCRCRPCRCRPCRCRP", "FRDFRDF"),
    ],
)
def test_layer_order_mirrors_the_reference(name, features, classifier):
    model = abstract_model(name)
    assert signature(model.feature_layers) == features
    assert signature(model.classifier) == classifier


def test_lrn_layers_carry_the_papers_constants():
    model = abstract_model("alexnet_lrn")
    for index in (2, 6):
        lrn = model.feature_layers[index]
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)


def traced(name: str, image_size: int, fn, batch: int = 1, **overrides):
    """`fn(model, x)` in eval mode on the abstract model: shapes and dtypes only."""
    graphdef, state = nnx.split(abstract_model(name, **overrides))

    def run(state, x):
        net = nnx.merge(graphdef, state)
        net.eval()
        return fn(net, x)

    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(run, state, x)


def layer_sizes(name: str, image_size: int) -> list[int]:
    """Spatial size after every conv and pool."""

    def run(net, x):
        sizes = []
        for layer in net.feature_layers:
            x = layer(x)
            if isinstance(layer, nnx.Conv | layers.MaxPool):
                sizes.append(x)
        return sizes

    return [a.shape[1] for a in traced(name, image_size, run)]


def feature_shapes(name: str, image_size: int, **overrides) -> dict[str, tuple]:
    feats = traced(name, image_size, lambda net, x: net.features(x), **overrides)
    return {k: v.shape[1:] for k, v in feats.items()}


def test_map_sizes_follow_the_papers():
    # Zeiler & Fergus Fig. 3: 110 (conv1), 55, 26 (conv2), 13, 13, 13, 13, 6.
    assert layer_sizes("zfnet", 224) == [110, 55, 26, 13, 13, 13, 13, 6]
    # Krizhevsky et al. Fig. 2 at 227: 55, 27, 27, 13, 13, 13, 13, 6.
    assert layer_sizes("alexnet_lrn", 227) == [55, 27, 27, 13, 13, 13, 13, 6]


def conv_params(kernel: int, widths: list[int]) -> int:
    """Weights and biases of a chain of convs with these input/output widths."""
    return sum(kernel * kernel * i * o + o for i, o in itertools.pairwise(widths))


@pytest.mark.parametrize(
    "name, overrides, delta",
    [
        ("alexnet_lrn", {"lrn": False}, 0),
        # BatchNorm after each conv (2 x 1,376) replaces the conv biases (1,376).
        ("alexnet_lrn", {"batch_norm": True}, 1_376),
        ("alexnet_bn", {"lrn": True}, 0),
        # One tower: conv2, conv4, conv5 see all their inputs (doubling their weights).
        ("alexnet_lrn", {"groups": 1}, 256 * 48 * 25 + 384 * 192 * 9 + 256 * 192 * 9),
        ("alexnet", {"batch_norm": True}, 64 + 192 + 384 + 256 + 256),
        ("alexnet", {"drop_rate": 0.0}, 0),
        # torchvision's vgg11_bn keeps the conv biases: + 2 x (64+128+2*256+4*512).
        ("vgg11", {"batch_norm": True}, 2 * 2_752),
        ("vgg11", {"lrn": True}, 0),
        ("vgg11", {"config": "D"}, PARAMS["vgg16"] - PARAMS["vgg11"]),
        # Sec. 4.2's ablation: B with each pair of 3x3 convs replaced by one 5x5 conv.
        (
            "vgg13",
            {"config": [(64, 5), "M", (128, 5), "M", (256, 5), "M", (512, 5), "M", (512, 5), "M"]},
            conv_params(5, [3, 64, 128, 256, 512, 512])
            - conv_params(3, [3, 64, 64, 128, 128, 256, 256, 512, 512, 512, 512]),
        ),
    ],
)
def test_overrides_change_exactly_the_expected_params(name, overrides, delta):
    assert count_params(abstract_model(name, **overrides)) == PARAMS[name] + delta


def test_overrides_keep_macs_where_they_should():
    assert model_macs("alexnet_lrn", lrn=False) == model_macs("alexnet_lrn")
    assert model_macs("vgg11", lrn=True, batch_norm=True) == model_macs("vgg11")


@pytest.mark.parametrize(
    "name, overrides, words",
    [
        ("alexnet", {"lrn": "yes"}, ["lrn", "'yes'", "True or False"]),
        ("alexnet_lrn", {"batch_norm": 1}, ["batch_norm", "1", "True or False"]),
        ("zfnet", {"drop_rate": 1.0}, ["drop_rate", "1.0", "[0, 1)"]),
        ("alexnet_lrn", {"groups": 3}, ["groups", "3", "1 (one dense network)", "2 (two towers)"]),
        ("vgg16", {"config": "F"}, ["'F'", "'A', 'B', 'C', 'D', 'E'"]),
        ("vgg16", {"config": [64, "X"]}, ["'X'", "'M'", "(width, kernel)"]),
        ("vgg16", {"config": [(64, 4), "M"]}, ["(64, 4)", "odd kernel"]),
        ("vgg16", {"config": ["M"]}, ["no conv"]),
    ],
)
def test_bad_override_values_are_refused_by_name(name, overrides, words):
    with pytest.raises(ValueError) as err:
        archs.create_model(name, **overrides)
    for word in words:
        assert word in str(err.value)


def test_lrn_is_the_papers_formula():
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-2)}^{min(C-1,i+2)} a_j^2)^beta (Sec. 3.3)."""
    a = np.random.default_rng(0).normal(scale=40.0, size=(2, 3, 4, 9)).astype(np.float32)
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = np.empty_like(a)
    channels = a.shape[-1]
    for i in range(channels):
        window = a[..., max(0, i - n // 2) : min(channels - 1, i + n // 2) + 1]
        expected[..., i] = a[..., i] / (k + alpha * (window**2).sum(-1)) ** beta
    got = layers.LocalResponseNorm(size=n, alpha=alpha, beta=beta, k=k)(jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    assert not np.allclose(expected, a / k**beta, rtol=1e-2)  # the neighbours matter here


def test_adaptive_avg_pool_uses_pytorchs_bins():
    """Bin i of n inputs into o outputs spans [floor(i*n/o), ceil((i+1)*n/o)) (PyTorch's rule)."""
    x = np.random.default_rng(1).normal(size=(2, 13, 10, 3)).astype(np.float32)
    for out in (6, 7, 4):
        expected = np.empty((2, out, out, 3), np.float32)
        for i in range(out):
            r0, r1 = math.floor(i * 13 / out), math.ceil((i + 1) * 13 / out)
            for j in range(out):
                c0, c1 = math.floor(j * 10 / out), math.ceil((j + 1) * 10 / out)
                expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
        got = layers.adaptive_avg_pool(jnp.asarray(x), out)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_stages_and_smallest_inputs():
    assert feature_shapes("alexnet_lrn", 227) == {
        "stem": (27, 27, 96),
        "stage1": (13, 13, 256),
        "stage2": (6, 6, 256),
        "pre_logits": (4096,),
    }
    # 63x63 is the smallest input torchvision's AlexNet takes: conv5's map is 1x1, which the
    # adaptive pooling spreads to 6x6.
    assert feature_shapes("alexnet", 63)["stage2"] == (1, 1, 256)
    assert traced("alexnet", 63, lambda net, x: net(x)).shape == (1, 1000)
    assert feature_shapes("vgg11_bn", 32) == {
        "stem": (16, 16, 64),
        "stage1": (8, 8, 128),
        "stage2": (4, 4, 256),
        "stage3": (2, 2, 512),
        "stage4": (1, 1, 512),
        "pre_logits": (4096,),
    }


def test_dtype_is_the_compute_dtype_only():
    model = abstract_model("vgg11", dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    logits = traced("vgg11", 32, lambda net, x: net(x), dtype=jnp.bfloat16)
    assert logits.dtype == jnp.bfloat16


def run_train_and_eval(model: nnx.Module, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of one batch of 2 in train mode, then in eval mode; both finite."""
    x = jax.random.normal(jax.random.key(3), (2, image_size, image_size, 3))
    model.train()
    train_logits = np.asarray(model(x))
    model.eval()
    eval_logits = np.asarray(model(x))
    for logits in (train_logits, eval_logits):
        assert logits.shape == (2, model.classifier[-1].out_features)
        assert np.all(np.isfinite(logits))
    return train_logits, eval_logits


# Real parameters are slow to draw on a CPU (fc1 alone is 38M to 103M of them), so one full
# AlexNet is built, and VGG's forward passes use small configs of the same builder.
@pytest.fixture(scope="module")
def alexnet_lrn():
    return archs.create_model("alexnet_lrn", rngs=nnx.Rngs(0))


def test_alexnet_lrn_forward_at_its_smallest_size(alexnet_lrn):
    """67x67 is the smallest input of the paper's AlexNet (conv5's map is 1x1)."""
    train_logits, eval_logits = run_train_and_eval(alexnet_lrn, 67)
    assert not np.allclose(train_logits, eval_logits)  # dropout is on in training


def test_grouped_conv_is_two_towers(alexnet_lrn):
    """conv2: each half of the outputs sees only its tower's half of the inputs."""
    conv2 = alexnet_lrn.feature_layers[4]
    kernel = np.asarray(conv2.kernel[...])
    assert kernel.shape == (5, 5, 48, 256)
    x = np.random.default_rng(2).normal(size=(1, 6, 7, 96)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected = np.empty((1, 6, 7, 256), np.float32)
    for tower in range(2):
        inputs = padded[..., 48 * tower : 48 * (tower + 1)]
        weights = kernel[..., 128 * tower : 128 * (tower + 1)]
        for r in range(6):
            for c in range(7):
                patch = inputs[:, r : r + 5, c : c + 5, :]
                expected[:, r, c, 128 * tower : 128 * (tower + 1)] = np.einsum(
                    "nhwi,hwio->no", patch, weights
                )
    expected += np.asarray(conv2.bias[...])
    np.testing.assert_allclose(np.asarray(conv2(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-5)


def test_paper_init(alexnet_lrn):
    """Krizhevsky et al. Sec. 5: N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fc
    layers, 0 elsewhere."""
    convs = [f for f in alexnet_lrn.feature_layers if isinstance(f, nnx.Conv)]
    fcs = [f for f in alexnet_lrn.classifier if isinstance(f, nnx.Linear)]
    biases = [np.unique(np.asarray(m.bias[...])).tolist() for m in convs + fcs]
    assert biases == [[0.0], [1.0], [0.0], [1.0], [1.0], [1.0], [1.0], [0.0]]
    for m in (convs[0], fcs[0]):
        assert np.std(np.asarray(m.kernel[...])) == pytest.approx(0.01, rel=0.05)


def test_vgg_forward_batch_norm_and_init():
    model = archs.create_model("vgg11_bn", config=[64, "M", 32, "M"], rngs=nnx.Rngs(0))
    before = np.asarray(model.feature_layers[1].mean[...]).copy()
    train_logits, eval_logits = run_train_and_eval(model, 20)
    assert not np.allclose(np.asarray(model.feature_layers[1].mean[...]), before)
    assert not np.allclose(train_logits, eval_logits)
    # torchvision's VGG init: convs He normal (fan-out), fc N(0, 0.01), biases 0.
    conv = model.feature_layers[0]
    assert np.std(np.asarray(conv.kernel[...])) == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.1)
    assert not np.any(np.asarray(conv.bias[...]))
    fc1 = model.classifier[0]
    assert np.std(np.asarray(fc1.kernel[...])) == pytest.approx(0.01, rel=0.05)
    assert not np.any(np.asarray(fc1.bias[...]))


def test_drop_rate_sets_every_dropout():
    for name in ("alexnet", "vgg16"):
        for rate in (0.5, 0.0, 0.3):
            model = abstract_model(name, drop_rate=rate)
            rates = [f.rate for f in model.classifier if isinstance(f, nnx.Dropout)]
            assert rates == [rate, rate]

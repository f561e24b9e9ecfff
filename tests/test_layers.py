"""archs.layers against direct numpy implementations of PyTorch's documented arithmetic.

Each oracle is written out here from the PyTorch documentation of the layer it checks
(Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, LocalResponseNorm) or from
the paper (squeeze-and-excitation, Hu et al. 2018, Fig. 1), with loops rather than the
vectorised tricks of the implementation. Shapes are tiny so that the file runs in seconds.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from training_support import device_count_env

from archs import layers
from archs.summary import abstract_model

ROOT = Path(__file__).resolve().parents[1]

ZEROS = nnx.initializers.zeros_init()


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def naive_conv(x, w, b, stride, pad, groups):
    """NHWC input, HWIO kernel (I per group), symmetric zero padding (ph, pw), as nn.Conv2d."""
    n, h, wd, _ = x.shape
    kh, kw, cin_g, cout = w.shape
    ph, pw = pad
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    oh, ow = (h + 2 * ph - kh) // stride + 1, (wd + 2 * pw - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout), np.float64)
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
                patch = patch[..., g * cin_g : (g + 1) * cin_g]
                out[:, i, j, o] = (patch * w[..., o]).sum(axis=(1, 2, 3)) + b[o]
    return out


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "groups", "out_size"),
    [
        ((7, 7), 3, 1, None, 1, (7, 7)),  # default padding k // 2 keeps the size
        ((7, 7), 3, 2, None, 2, (4, 4)),
        ((6, 5), (1, 5), 1, None, 1, (6, 5)),  # padding (0, 2) for a 1x5 kernel
        ((9, 9), 5, 2, 0, 1, (3, 3)),  # no padding: floor((9 - 5) / 2) + 1
        ((8, 8), 3, 2, 2, 2, (5, 5)),
    ],
)
def test_conv2d_matches_pytorch_arithmetic(size, kernel, stride, padding, groups, out_size):
    cin, cout = 4, 6
    conv = layers.conv2d(
        cin,
        cout,
        kernel,
        stride=stride,
        padding=padding,
        groups=groups,
        bias=True,
        kernel_init=ZEROS,
        rngs=nnx.Rngs(0),
    )
    kh, kw = layers.pair(kernel)
    w, b = rand(kh, kw, cin // groups, cout, seed=1), rand(cout, seed=2)
    conv.kernel[...], conv.bias[...] = jnp.asarray(w), jnp.asarray(b)
    x = rand(2, *size, cin)
    ours = np.asarray(conv(jnp.asarray(x)))
    pad = layers.pair(padding) if padding is not None else (kh // 2, kw // 2)
    assert ours.shape == (2, *out_size, cout)
    np.testing.assert_allclose(ours, naive_conv(x, w, b, stride, pad, groups), atol=1e-4)


def test_batch_norm_train_mode_updates_running_stats_with_pytorch_momentum():
    bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
    x = rand(4, 3, 2, 3) * 2 + 1
    y = np.asarray(bn(jnp.asarray(x)))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    # Normalised with the batch's biased variance and eps 1e-5, as nn.BatchNorm2d.
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch, from mean 0 and var 1.
    # (PyTorch feeds the unbiased variance, var * n / (n - 1), into running_var; flax, hence
    # this layer, the biased one: a factor 1 + 1/(N*H*W - 1), negligible at training sizes.)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var, rtol=1e-5)
    bn(jnp.asarray(x))
    np.testing.assert_allclose(bn.mean[...], 0.19 * mean, rtol=1e-5)


def test_batch_norm_eval_mode_uses_running_stats():
    bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
    running_mean, running_var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    scale, bias = np.array([2.0, 1.0, -1.0]), np.array([0.0, 3.0, 1.0])
    bn.mean[...], bn.var[...] = jnp.asarray(running_mean), jnp.asarray(running_var)
    bn.scale[...], bn.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    bn.eval()
    x = rand(2, 3, 3, 3)
    expected = (x - running_mean) / np.sqrt(running_var + 1e-5) * scale + bias
    np.testing.assert_allclose(bn(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean[...], running_mean)  # eval leaves the stats alone


def torch_pool_out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """nn.MaxPool2d's output size (its docs / pooling_output_shape in ATen)."""
    rounded = math.ceil if ceil_mode else math.floor
    out = rounded((n + 2 * p - k) / s) + 1
    if ceil_mode and (out - 1) * s >= n + p:  # the last window would start in the padding
        out -= 1
    return out


def naive_max_pool(x: np.ndarray, k: int, s: int, p: int, out: int) -> np.ndarray:
    """Each window is clipped to the input (padding is -inf, so it never wins)."""
    res = np.empty((x.shape[0], out, out, x.shape[3]), x.dtype)
    for i in range(out):
        for j in range(out):
            r0, c0 = max(i * s - p, 0), max(j * s - p, 0)
            window = x[:, r0 : i * s - p + k, c0 : j * s - p + k]
            res[:, i, j] = window.max(axis=(1, 2))
    return res


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize(
    ("n", "k", "s", "p"),
    [
        (112, 3, 2, 0),  # GoogLeNet's maxpool1: 56 with ceil_mode (torchvision), 55 without
        (112, 3, 2, 1),  # ResNet's stem pool: 56 either way
        (14, 2, 2, 0),
        (5, 2, 2, 1),  # ceil gives 4 windows, the last starting in the padding: dropped, 3
        (6, 3, 2, 1),
        (7, 3, 3, 1),
    ],
)
def test_max_pool_output_size_and_values_as_pytorch(n, k, s, p, ceil_mode):
    x = -np.abs(rand(1, n, n, 2)) - 1  # all negative: a zero-padded pool would be caught
    ours = np.asarray(layers.max_pool(jnp.asarray(x), k, s, p, ceil_mode=ceil_mode))
    out = torch_pool_out(n, k, s, p, ceil_mode)
    assert ours.shape == (1, out, out, 2)
    np.testing.assert_array_equal(ours, naive_max_pool(x, k, s, p, out))


def test_max_pool_known_sizes():
    # torchvision GoogLeNet: 112 -> 56 -> 28 -> 14 -> 7 through MaxPool2d(3, 2, ceil_mode=True).
    sizes = [112]
    for _ in range(4):
        x = jnp.zeros((1, sizes[-1], sizes[-1], 1))
        sizes.append(layers.max_pool(x, 3, 2, ceil_mode=True).shape[1])
    assert sizes == [112, 56, 28, 14, 7]
    # The dropped last window: MaxPool2d(2, 2, padding=1, ceil_mode=True) on 5 gives 3, not 4.
    assert layers.max_pool(jnp.zeros((1, 5, 5, 1)), 2, 2, 1, ceil_mode=True).shape[1] == 3


def naive_avg_pool(x, k, s, p, count_include_pad):
    n = x.shape[1]
    out = (n + 2 * p - k) // s + 1
    res = np.empty((x.shape[0], out, out, x.shape[3]), np.float64)
    for i in range(out):
        for j in range(out):
            r0, r1 = i * s - p, i * s - p + k
            c0, c1 = j * s - p, j * s - p + k
            window = x[:, max(r0, 0) : min(r1, n), max(c0, 0) : min(c1, n)]
            count = k * k if count_include_pad else window.shape[1] * window.shape[2]
            res[:, i, j] = window.sum(axis=(1, 2)) / count
    return res


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize(("n", "k", "s", "p"), [(4, 3, 1, 1), (7, 3, 2, 1), (8, 2, 2, 0)])
def test_avg_pool_count_include_pad(n, k, s, p, count_include_pad):
    x = rand(2, n, n, 3)
    ours = layers.avg_pool(jnp.asarray(x), k, s, p, count_include_pad=count_include_pad)
    np.testing.assert_allclose(ours, naive_avg_pool(x, k, s, p, count_include_pad), atol=1e-6)


def test_avg_pool_corner_of_ones():
    ones = jnp.ones((1, 4, 4, 1))
    assert float(layers.avg_pool(ones, 3, 1, 1)[0, 0, 0, 0]) == pytest.approx(4 / 9)
    assert float(layers.avg_pool(ones, 3, 1, 1, count_include_pad=False)[0, 0, 0, 0]) == 1.0


def naive_adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """AdaptiveAvgPool2d: bin i of o over n spans [floor(i n / o), ceil((i + 1) n / o))."""
    _, h, w, _ = x.shape
    res = np.empty((x.shape[0], out_h, out_w, x.shape[3]), np.float64)
    for i in range(out_h):
        r0, r1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            c0, c1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
            res[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return res


@pytest.mark.parametrize(
    ("size", "output_size"),
    [((5, 5), 3), ((7, 10), (3, 4)), ((6, 6), 3), ((6, 4), (6, 4)), ((3, 3), 5), ((13, 13), 6)],
)
def test_adaptive_avg_pool_bins(size, output_size):
    x = rand(2, *size, 3)
    out_h, out_w = layers.pair(output_size)
    ours = layers.adaptive_avg_pool(jnp.asarray(x), output_size)
    assert ours.shape == (2, out_h, out_w, 3)
    np.testing.assert_allclose(ours, naive_adaptive_avg_pool(x, out_h, out_w), atol=1e-6)


def test_adaptive_avg_pool_overlapping_bins_by_hand():
    # 5 -> 3: bins [0, 2), [1, 4), [3, 5) overlap.
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    ours = layers.adaptive_avg_pool(x, (3, 1))
    np.testing.assert_allclose(ours[0, :, 0, 0], [0.5, 2.0, 3.5])


@pytest.mark.parametrize("size", [5, 4, 1])
def test_local_response_norm_direct_formula(size):
    alpha, beta, k = 1e-2, 0.75, 2.0
    x = rand(2, 3, 3, 7) * 3
    lrn = layers.LocalResponseNorm(size=size, alpha=alpha, beta=beta, k=k)
    ours = np.asarray(lrn(jnp.asarray(x)))
    expected = np.empty_like(x)
    channels = x.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + (size - 1) // 2)
        total = (x[..., lo : hi + 1] ** 2).sum(axis=-1)
        expected[..., c] = x[..., c] / (k + alpha * total) ** beta
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_squeeze_excite_against_numpy():
    channels, hidden = 8, 2
    se = layers.SqueezeExcite(channels, reduction=4, rngs=nnx.Rngs(0))
    assert se.fc1.kernel.shape == (1, 1, channels, hidden)
    w1, b1 = rand(channels, hidden, seed=1), rand(hidden, seed=2)
    w2, b2 = rand(hidden, channels, seed=3), rand(channels, seed=4)
    se.fc1.kernel[...], se.fc1.bias[...] = jnp.asarray(w1[None, None]), jnp.asarray(b1)
    se.fc2.kernel[...], se.fc2.bias[...] = jnp.asarray(w2[None, None]), jnp.asarray(b2)
    x = rand(2, 3, 4, channels)
    squeezed = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(squeezed @ w1 + b1, 0) @ w2 + b2)))
    expected = x * gate[:, None, None, :]
    np.testing.assert_allclose(se(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_conv_norm_act_order_and_options():
    unit = layers.ConvNormAct(2, 3, 1, kernel_init=ZEROS, rngs=nnx.Rngs(0))
    assert unit.conv.bias is None  # no conv bias before a BatchNorm
    w = rand(1, 1, 2, 3)
    unit.conv.kernel[...] = jnp.asarray(w)
    x = rand(4, 2, 2, 2)
    conv = x @ w[0, 0]
    expected = np.maximum((conv - conv.mean((0, 1, 2))) / np.sqrt(conv.var((0, 1, 2)) + 1e-5), 0)
    np.testing.assert_allclose(unit(jnp.asarray(x)), expected, atol=1e-5)
    plain = layers.ConvNormAct(2, 3, 1, norm=False, act=None, kernel_init=ZEROS, rngs=nnx.Rngs(0))
    assert plain.bn is None and plain.conv.bias is not None
    zero = layers.ConvNormAct(2, 3, 1, zero_init_norm=True, kernel_init=ZEROS, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(zero.bn.scale[...], np.zeros(3))


@pytest.mark.parametrize(
    ("init", "shape", "std"),
    [
        # One shape for both He variants: fan-out 9 * 64, fan-in 9 * 16.
        (layers.he_normal_fan_out, (3, 3, 16, 64), math.sqrt(2 / (9 * 64))),
        (layers.he_normal_fan_in, (3, 3, 16, 64), math.sqrt(2 / (9 * 16))),
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has std 1 / sqrt(3 fan_in).
        (layers.torch_default_init, (3, 3, 64, 16), 1 / math.sqrt(3 * 9 * 64)),
    ],
)
def test_initializers_have_pytorchs_scale(init, shape, std):
    kernel = np.asarray(init(jax.random.key(0), shape))
    assert kernel.std() == pytest.approx(std, rel=0.05)


def test_torch_default_init_bounds():
    bound = 1 / math.sqrt(9 * 64)
    kernel = np.asarray(layers.torch_default_init(jax.random.key(0), (3, 3, 64, 16)))
    bias = np.asarray(layers.torch_default_bias_init(9 * 64)(jax.random.key(1), (1000,)))
    for values in (kernel, bias):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.95 * bound


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_differentiates_under_jit(count_include_pad):
    # A traced reduce_window init value once broke linearization (DenseNet/GoogLeNet training).
    def loss(x):
        return layers.avg_pool(x, 3, 2, 1, count_include_pad=count_include_pad).sum()

    grad = jax.jit(jax.grad(loss))(jnp.ones((1, 5, 5, 2)))
    assert grad.shape == (1, 5, 5, 2) and bool(jnp.isfinite(grad).all())


# ----- ghost BatchNorm (batch statistics over groups of the batch) --------------------------


def _bn_pair(seed: int = 0) -> tuple[layers.BatchNorm, nnx.BatchNorm]:
    """Our BatchNorm and flax's with the same non-trivial scale, bias and running statistics."""
    ours = layers.batch_norm(4, rngs=nnx.Rngs(0))
    plain = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for name, value in (
        ("scale", rand(4, seed=seed) + 1),
        ("bias", rand(4, seed=seed + 1)),
        ("mean", rand(4, seed=seed + 2)),
        ("var", rand(4, seed=seed + 3) ** 2 + 0.5),
    ):
        getattr(ours, name)[...] = getattr(plain, name)[...] = jnp.asarray(value)
    return ours, plain


@pytest.mark.parametrize("k", [1, 2, 4])
def test_ghost_batch_norm_is_batch_norm_on_each_group(k):
    """Outputs: each group of k consecutive examples through a BatchNorm of its own. Running
    statistics: the groups' statistics averaged (the same as averaging the groups' separately
    updated running statistics, since the update is linear)."""
    ours, plain = _bn_pair()
    layers.set_bn_group_size(ours, k)
    x = rand(8, 3, 2, 4) * 3 + 1
    out = np.asarray(ours(jnp.asarray(x)))
    group_outputs, group_means, group_vars = [], [], []
    for start in range(0, 8, k):
        bn = nnx.clone(plain)
        group_outputs.append(np.asarray(bn(jnp.asarray(x[start : start + k]))))
        group_means.append(np.asarray(bn.mean[...]))
        group_vars.append(np.asarray(bn.var[...]))
    np.testing.assert_allclose(out, np.concatenate(group_outputs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], np.mean(group_means, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], np.mean(group_vars, axis=0), rtol=1e-5, atol=1e-6)


def test_ghost_batch_norm_of_the_whole_batch_is_batch_norm():
    """Group size 0 is flax's BatchNorm to the bit; a group of the whole batch equals it."""
    x = jnp.asarray(rand(8, 3, 2, 4) * 3 + 1)
    ours, plain = _bn_pair()
    expected = plain(x)
    np.testing.assert_array_equal(ours(x), expected)
    np.testing.assert_array_equal(ours.var[...], plain.var[...])
    whole, plain = _bn_pair()
    layers.set_bn_group_size(whole, 8)
    np.testing.assert_allclose(whole(x), plain(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(whole.mean[...], plain.mean[...], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(whole.var[...], plain.var[...], rtol=1e-6, atol=1e-7)


def test_ghost_batch_norm_in_bfloat16_and_eval_mode():
    x = jnp.asarray(rand(8, 3, 2, 4) * 3 + 1)
    bf16 = layers.batch_norm(4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    layers.set_bn_group_size(bf16, 4)
    assert bf16(x).dtype == jnp.bfloat16 and bf16.mean[...].dtype == jnp.float32
    ours, plain = _bn_pair()
    layers.set_bn_group_size(ours, 2)
    ours.eval()
    plain.eval()
    np.testing.assert_array_equal(ours(x), plain(x))  # running statistics: no groups


def test_bad_group_sizes_are_one_line_errors():
    bn = layers.batch_norm(4, rngs=nnx.Rngs(0))
    layers.set_bn_group_size(bn, 3)
    with pytest.raises(ValueError, match=r"^bn_group_size=3 does not divide the batch of 8 "):
        jax.eval_shape(bn, jax.ShapeDtypeStruct((8, 2, 2, 4), jnp.float32))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"bn_group_size must be an int >= 0, got {bad}"):
            layers.set_bn_group_size(bn, bad)
    plain = nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"layers\.0 is an nnx\.BatchNorm without groups"):
        layers.set_bn_group_size(plain, 2)


def test_every_family_takes_a_group_size():
    # Inception-ResNet-v2's conv units are GoogLeNet's `layers.ConvNormAct`.
    for name, overrides in (
        ("resnet50", {"depths": (1, 2, 1, 1), "scan_blocks": True}),
        ("densenet121", {"block_config": (1, 1)}),
        ("googlenet", {}),
        ("vgg11_bn", {}),
        ("alexnet_bn", {}),
    ):
        model = abstract_model(name, **overrides)
        layers.set_bn_group_size(model, 4)
        norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
        assert norms and all(m.group_size == 4 for m in norms), name


GHOST_BN_ON_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from functools import partial
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
import archs
from archs import layers

assert jax.device_count() == 8
x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8, 8, 3)), jnp.float32)
model = archs.create_model("resnet20", depths=(1, 2, 1), scan_blocks=True)
model.train()
graphdef, state = nnx.split(model)

def forward(group_size, state, x):
    net = nnx.merge(graphdef, state)
    layers.set_bn_group_size(net, group_size)
    return net(x), nnx.state(net, nnx.BatchStat)

def check(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)

mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
for k in (2, 4, 16):  # groups within a device, across devices, the whole batch
    check(jax.jit(partial(forward, k))(state, sharded), jax.jit(partial(forward, k))(state, x))

# Per device (shard_map, pmap): groups of 2 of each device's 2 examples are the global batch's
# groups of 2; the running statistics averaged over devices (as the train step does) too.
def per_device(state, x):
    logits, stats = forward(2, state, x)
    return logits, jax.lax.pmean(stats, "data")

expected = jax.jit(partial(forward, 2))(state, x)
shard = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()))
check(jax.jit(shard)(state, sharded), expected)
pmapped = jax.pmap(per_device, axis_name="data", in_axes=(None, 0))
logits, stats = pmapped(state, x.reshape(8, 2, 8, 8, 3))
check((logits.reshape(16, -1), jax.tree.map(lambda s: s[0], stats)), expected)
print("ok")
"""


@pytest.mark.slow
def test_ghost_batch_norm_under_jit_sharding_shard_map_and_pmap():
    env = {
        **os.environ,
        **device_count_env(8),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", GHOST_BN_ON_DEVICES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]

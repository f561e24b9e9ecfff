"""Building parts shared by every family: conv-norm-act, LRN, squeeze-excitation, pooling.

Each part reproduces the PyTorch reference's arithmetic exactly (explicit symmetric padding,
ceil-mode max pooling through asymmetric -inf padding, adaptive average pooling bins,
BatchNorm momentum/epsilon), so that converted torchvision/timm weights compute the same
function. Parameters are float32; `dtype` is the compute dtype; BatchNorm statistics stay
float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from archs.checks import check
from archs.convolution import ConvFunction

Array = jax.Array
Activation = Callable[[Array], Array]

# PyTorch's BatchNorm momentum 0.1 updates running = 0.9 * running + 0.1 * batch: flax's 0.9.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPS = 1e-5

he_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
"""torchvision ResNet/VGG conv init: kaiming_normal_(mode='fan_out', nonlinearity='relu')."""

he_normal_fan_in = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
"""PyTorch's kaiming_normal_ with its defaults (mode='fan_in'), as torchvision's DenseNet."""

torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's default Linear/Conv weight init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """(k, k) from an int, or the pair itself."""
    if isinstance(value, int):
        return (value, value)
    return tuple(value)  # type: ignore[return-value]


ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int = 1,
    padding: int | Sequence[int] | None = None,
    groups: int = 1,
    bias: bool = False,
    kernel_init: nnx.Initializer = he_normal_fan_out,
    bias_init: nnx.Initializer = ZEROS,
    dtype: jnp.dtype = jnp.float32,
    conv_general_dilated: ConvFunction = lax.conv_general_dilated,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A convolution with PyTorch's explicit symmetric padding (default: kernel // 2), computed
    by `conv_general_dilated` (see `archs.convolution`)."""
    kh, kw = pair(kernel_size)
    ph, pw = pair(padding) if padding is not None else (kh // 2, kw // 2)
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kh, kw),
        strides=(stride, stride),
        padding=((ph, ph), (pw, pw)),
        feature_group_count=groups,
        use_bias=bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm (same variables: `scale`, `bias`, `mean`, `var`) that can take its batch
    statistics over groups of `group_size` consecutive examples of the batch it sees: ghost
    batch normalisation (Hoffer et al. 2017, "Train longer, generalize better", Sec. 4). Each
    group is normalised with its own mean and variance; the running statistics move towards
    the mean over groups of the groups' means and variances. `group_size` 0 (the default) is
    the whole batch: nnx.BatchNorm itself. Set it on a built model with `set_bn_group_size`.

    The groups are cut from the batch this layer sees: the global batch under `jax.jit` (a
    sharded batch stays sharded; XLA moves the examples a group needs), one device's under
    `jax.shard_map` or `jax.pmap`, and one micro-batch's with gradient accumulation.
    """

    def __init__(self, num_features: int, *, group_size: int = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size

    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        running = self.use_running_average if use_running_average is None else use_running_average
        if not self.group_size or running:
            return super().__call__(x, use_running_average, mask=mask)
        if mask is not None:
            raise ValueError("BatchNorm with a group_size takes no mask")
        n = x.shape[0]
        if n % self.group_size:
            raise ValueError(
                f"bn_group_size={self.group_size} does not divide the batch of {n} examples this "
                "BatchNorm sees"
            )
        # nnx.BatchNorm's arithmetic, per group: statistics in at least float32 (the fast
        # variance E[x^2] - E[x]^2 unless use_fast_variance is off), normalisation in `dtype`.
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        groups = x.reshape(n // self.group_size, self.group_size, *x.shape[1:])
        feature = self.axis % x.ndim + 1
        axes = tuple(i for i in range(1, groups.ndim) if i != feature)
        stats = groups.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
        mean = stats.mean(axes, keepdims=True)
        if self.use_fast_variance:
            var = jnp.maximum(0.0, jnp.square(stats).mean(axes, keepdims=True) - jnp.square(mean))
        else:
            var = jnp.square(stats - mean).mean(axes, keepdims=True)
        feature_shape = [1] * groups.ndim
        feature_shape[feature] = groups.shape[feature]
        mul = lax.rsqrt(var + self.epsilon)
        if scale is not None:
            mul *= scale.reshape(feature_shape)
        y = (groups - mean) * mul
        if bias is not None:
            y += bias.reshape(feature_shape)
        m = self.momentum
        self.mean[...] = lax.stop_gradient(m * self.mean[...] + (1 - m) * mean.mean(0).ravel())
        self.var[...] = lax.stop_gradient(m * self.var[...] + (1 - m) * var.mean(0).ravel())
        return y.reshape(x.shape).astype(x.dtype)


def set_bn_group_size(model: nnx.Module, group_size: int) -> None:
    """Make every BatchNorm of `model` take its statistics over groups of `group_size`
    consecutive examples (ghost batch normalisation, see `BatchNorm`); 0 restores whole-batch
    statistics. A group size that does not divide a batch is a ValueError when that batch
    arrives."""
    ok = isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 0
    check("bn_group_size", group_size, "an int >= 0", ok)
    norms = [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    for path, module in norms:
        if not isinstance(module, BatchNorm):
            where = ".".join(map(str, path))
            raise ValueError(
                f"{where} is an nnx.BatchNorm without groups (build it with "
                "archs.layers.batch_norm)"
            )
    for _, module in norms:
        module.group_size = group_size


def batch_norm(
    num_features: int,
    *,
    eps: float = TORCH_BN_EPS,
    momentum: float = TORCH_BN_MOMENTUM,
    scale_init: nnx.Initializer = ONES,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> BatchNorm:
    """BatchNorm with PyTorch's defaults; statistics and parameters in float32."""
    return BatchNorm(
        num_features,
        momentum=momentum,
        epsilon=eps,
        scale_init=scale_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    kernel_init: nnx.Initializer | None = None,
    bias_init: nnx.Initializer | None = None,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A dense layer; defaults to PyTorch's nn.Linear initialisation."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init or torch_default_init,
        bias_init=bias_init or torch_default_bias_init(in_features),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def classifier_fc(
    in_features: int,
    num_classes: int,
    *,
    init_std: float = 0.0,
    bias_init: nnx.Initializer | None = None,
    dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A network's last fc layer: `linear`'s initialisation (PyTorch's; `bias_init` if given)
    or, with `init_std` > 0, weights from N(0, init_std) and zero bias (Goyal et al. 2017,
    Sec. 5.1: std 0.01)."""
    if init_std > 0:
        return linear(
            in_features,
            num_classes,
            kernel_init=nnx.initializers.normal(init_std),
            bias_init=ZEROS,
            dtype=dtype,
            rngs=rngs,
        )
    return linear(in_features, num_classes, bias_init=bias_init, dtype=dtype, rngs=rngs)


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ConvNormAct(nnx.Module):
    """conv -> optional BatchNorm -> optional activation: the unit of every modern net here."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        padding: int | Sequence[int] | None = None,
        groups: int = 1,
        norm: bool = True,
        act: Activation | None = jax.nn.relu,
        bias: bool | None = None,
        bn_eps: float = TORCH_BN_EPS,
        zero_init_norm: bool = False,
        kernel_init: nnx.Initializer = he_normal_fan_out,
        bias_init: nnx.Initializer | None = None,
        dtype: jnp.dtype = jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        self.conv = conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=(not norm) if bias is None else bias,
            kernel_init=kernel_init,
            bias_init=bias_init or nnx.initializers.zeros_init(),
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )
        self.bn = (
            batch_norm(
                out_channels,
                eps=bn_eps,
                scale_init=nnx.initializers.zeros_init()
                if zero_init_norm
                else nnx.initializers.ones_init(),
                dtype=dtype,
                rngs=rngs,
            )
            if norm
            else None
        )
        self.act = act

    def __call__(self, x: Array) -> Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


def apply_in_order(steps: Callable[[Array], Array] | Sequence[Callable], x: Array) -> Array:
    """`x` through each layer of a list in order (an nnx.List standing for torch's
    nn.Sequential), or through a single layer."""
    if isinstance(steps, Sequence):
        for step in steps:
            x = step(x)
        return x
    return steps(x)


class LocalResponseNorm(nnx.Module):
    """The AlexNet paper's LRN across channels: b = a / (k + alpha * sum_{n nbrs} a^2)^beta.

    `alpha` is the paper's (not divided by `size`); PyTorch's LocalResponseNorm(size, alpha',
    beta, k) divides its alpha' by size, so paper alpha=1e-4 with size 5 is PyTorch's 5e-4.
    The window is centred on each channel: size // 2 before and (size - 1) // 2 after, zeros
    beyond the edges, as PyTorch.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def __call__(self, x: Array) -> Array:
        squared = jnp.square(x.astype(jnp.float32))
        before, after = self.size // 2, (self.size - 1) // 2
        window_sum = jax.lax.reduce_window(
            squared,
            0.0,
            jax.lax.add,
            window_dimensions=(1, 1, 1, self.size),
            window_strides=(1, 1, 1, 1),
            padding=((0, 0), (0, 0), (0, 0), (before, after)),
        )
        denominator = (self.k + self.alpha * window_sum) ** self.beta
        return (x.astype(jnp.float32) / denominator).astype(x.dtype)


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation (Hu et al.): global pool, FC-ReLU-FC-sigmoid, channel rescale.

    The two FC layers are 1x1 convolutions with bias, as timm's `fc1`/`fc2`.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        reduced_channels: int | None = None,
        dtype: jnp.dtype = jnp.float32,
        conv_general_dilated: ConvFunction = lax.conv_general_dilated,
        rngs: nnx.Rngs,
    ):
        hidden = reduced_channels or channels // reduction
        conv = {"dtype": dtype, "conv_general_dilated": conv_general_dilated, "rngs": rngs}
        self.fc1 = conv2d(channels, hidden, 1, bias=True, **conv)
        self.fc2 = conv2d(hidden, channels, 1, bias=True, **conv)

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = jax.nn.relu(self.fc1(s))
        s = jax.nn.sigmoid(self.fc2(s))
        return x * s


def drop_path(x: Array, rate: float | Array, key: Array) -> Array:
    """Stochastic depth (Huang et al. 2016): each example's `x` (a residual branch) zeroed with
    probability `rate`, the kept ones scaled by 1 / (1 - rate) so the expectation is `x`."""
    keep = 1.0 - rate
    kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / keep, 0.0).astype(x.dtype)


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Per-block drop probabilities rising linearly from 0 at the first block to `rate` at the
    last (Huang et al. 2016's linear decay rule; timm's `drop_path_rate`)."""
    return [rate * i / (blocks - 1) if blocks > 1 else 0.0 for i in range(blocks)]


def drop_path_key(stream: nnx.RngStream | None, deterministic: bool) -> Array | None:
    """A fresh key for one forward pass's drop-path draws from `stream` (an RNG stream the
    train step reseeds); None in eval mode or without drop path."""
    return None if stream is None or deterministic else stream()


def block_drops(
    key: Array | None, first: int, rates: Sequence[float]
) -> tuple[Array, Array] | None:
    """`(keys, rates)` for blocks `first`, `first + 1`, ... of a network: each block's key is
    `key` folded with its index, so every block draws its own examples to drop, in a scan as
    outside one. None (nothing to drop) without a key or when every rate is 0."""
    if key is None or not any(rates):
        return None
    indices = jnp.arange(first, first + len(rates))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    return keys, jnp.asarray(rates, jnp.float32)


def max_pool(
    x: Array,
    kernel_size: int,
    stride: int,
    padding: int = 0,
    *,
    ceil_mode: bool = False,
) -> Array:
    """PyTorch's MaxPool2d, ceil_mode included, through asymmetric -inf padding.

    With ceil_mode the output size is ceil((n + 2p - k) / s) + 1, dropping a last window that
    would start inside the right padding, as PyTorch does.
    """
    pads = []
    for n in x.shape[1:3]:
        extra = 0
        if ceil_mode:
            out = math.ceil((n + 2 * padding - kernel_size) / stride) + 1
            if (out - 1) * stride >= n + padding:
                out -= 1
            extra = max(0, (out - 1) * stride + kernel_size - (n + 2 * padding))
        pads.append((padding, padding + extra))
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, kernel_size, kernel_size, 1),
        window_strides=(1, stride, stride, 1),
        padding=((0, 0), pads[0], pads[1], (0, 0)),
    )


def avg_pool(
    x: Array, kernel_size: int, stride: int, padding: int = 0, *, count_include_pad: bool = True
) -> Array:
    """PyTorch's AvgPool2d: with count_include_pad (its default) zero padding counts in the
    mean; without, each window is averaged over its positions inside the input only."""

    def window_sum(a: Array) -> Array:
        return jax.lax.reduce_window(
            a,
            0.0,
            jax.lax.add,
            window_dimensions=(1, kernel_size, kernel_size, 1),
            window_strides=(1, stride, stride, 1),
            padding=((0, 0), (padding, padding), (padding, padding), (0, 0)),
        )

    if count_include_pad:
        return window_sum(x) / (kernel_size * kernel_size)
    return window_sum(x) / window_sum(jnp.ones((1, *x.shape[1:3], 1), x.dtype))


class MaxPool(nnx.Module):
    """`max_pool` as a parameterless layer: it holds the place of the reference's nn.MaxPool2d
    in a list of layers, so that the indices after it (hence checkpoint keys) stay the same."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, *, ceil_mode: bool = False):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def __call__(self, x: Array) -> Array:
        return max_pool(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)


class AvgPool(nnx.Module):
    """`avg_pool` as a parameterless layer, the counterpart of nn.AvgPool2d (see `MaxPool`)."""

    def __init__(
        self, kernel_size: int, stride: int, padding: int = 0, *, count_include_pad: bool = True
    ):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def __call__(self, x: Array) -> Array:
        return avg_pool(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            count_include_pad=self.count_include_pad,
        )


def global_avg_pool(x: Array) -> Array:
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


def adaptive_avg_pool(x: Array, output_size: int | Sequence[int]) -> Array:
    """PyTorch's AdaptiveAvgPool2d: bin i spans [floor(i*n/o), ceil((i+1)*n/o)).

    When n is a multiple of o the bins are equal and one reshape does it.
    """
    out_h, out_w = pair(output_size)
    n, h, w, c = x.shape
    if h % out_h == 0 and w % out_w == 0:
        return x.reshape(n, out_h, h // out_h, out_w, w // out_w, c).mean(axis=(2, 4))
    rows = [_adaptive_bin(i, h, out_h) for i in range(out_h)]
    cols = [_adaptive_bin(j, w, out_w) for j in range(out_w)]
    pooled_rows = jnp.stack([x[:, a:b].mean(axis=1) for a, b in rows], axis=1)
    return jnp.stack([pooled_rows[:, :, a:b].mean(axis=2) for a, b in cols], axis=2)


def _adaptive_bin(index: int, size: int, bins: int) -> tuple[int, int]:
    return (index * size) // bins, -((-(index + 1) * size) // bins)

"""DenseNet (Huang et al. 2017): one builder for torchvision's DenseNet-BC nets and the paper's.

Every network is `densenet(...)` with its growth rate k, bottleneck width `bn_size` (the 1x1
conv gives bn_size * k channels), transition `compression` (theta), `block_config` (layers per
dense block), `num_init_features` (default 2k, as in every net of the paper and torchvision),
`stem` and `drop_rate`:

- dense layer (DenseNet-BC): BN-ReLU-1x1 conv(bn_size * k)-BN-ReLU-3x3 conv(k), then dropout
  when drop_rate > 0; its k new channels are appended to its input's.
- transition: BN-ReLU-1x1 conv(floor(theta * C))-2x2/2 average pooling.
- stem 'imagenet': 7x7/2 conv + BN + ReLU + 3x3/2 max pooling (padding 1); 'cifar': one 3x3
  conv (the paper's CIFAR nets, Sec. 3 "Implementation Details").
- head: BN-ReLU-global average pooling-linear.

Overrides of `create_model`: `growth_rate`, `block_config`, `num_init_features`, `bn_size`,
`compression`, `stem` ('imagenet', 'cifar'), `drop_rate`, `fc_init_std` (0: the classifier
initialised as below; > 0: its weights from N(0, fc_init_std), Goyal et al. 2017, Sec. 5.1).
PyTorch's `memory_efficient` flag only trades memory for recomputation, so it has no
counterpart here. No `drop_path_rate`: stochastic depth (Huang et al. 2016) drops a residual
branch and keeps the identity, and a dense layer has no identity to keep; zeroing its new
channels per example would be a dropout of feature maps, with no reference to follow.

Initialisation as torchvision: convs kaiming_normal_ (fan-in; He et al. 2015, which the paper
cites), BatchNorm 1/0, the classifier's weight PyTorch's default and its bias 0.

Module paths are torchvision's `features.X` without the `features.` prefix (`features` is the
method of the calling contract): `conv0`, `norm0`, `denseblock1.denselayer1.norm1` / `conv1` /
`norm2` / `conv2`, `transition1.norm` / `conv`, `norm5`; `classifier` is the same. So a torch
key is `"features." + path` for every path but `classifier.*`.

`features(x)`: `stem` (after pool0, or after the CIFAR conv), `stage1`..`stageN` (the output
of dense block i, before the transition that follows it; the last before norm5),
`pre_logits`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.checks import (
    check,
    check_choice,
    check_non_negative,
    check_positive_int,
    check_rate,
    is_number,
)
from archs.classifier import Classifier
from archs.convolution import LAX, ConvFunction, ConvImpl
from archs.registry import CIFAR10, register

Array = jax.Array

STEMS = ("imagenet", "cifar")


def _conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dtype: jnp.dtype,
    conv_general_dilated: ConvFunction,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A bias-free conv with torchvision DenseNet's init, padding kernel // 2."""
    return layers.conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        kernel_init=layers.he_normal_fan_in,
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


class DenseLayer(nnx.Module):
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv (-dropout), its k outputs concatenated to its input."""

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        *,
        dtype: jnp.dtype,
        conv_general_dilated: ConvFunction,
        rngs: nnx.Rngs,
    ):
        width = bn_size * growth_rate
        conv = {"dtype": dtype, "conv_general_dilated": conv_general_dilated, "rngs": rngs}
        self.norm1 = layers.batch_norm(in_channels, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(in_channels, width, 1, **conv)
        self.norm2 = layers.batch_norm(width, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(width, growth_rate, 3, **conv)
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs) if drop_rate > 0 else None

    def __call__(self, x: Array) -> Array:
        y = self.conv1(jax.nn.relu(self.norm1(x)))
        y = self.conv2(jax.nn.relu(self.norm2(y)))
        if self.dropout is not None:
            y = self.dropout(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nnx.Module):
    """`num_layers` dense layers named `denselayer1`.. as torchvision's, each adding k channels."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        *,
        dtype: jnp.dtype,
        conv_general_dilated: ConvFunction,
        rngs: nnx.Rngs,
    ):
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = DenseLayer(
                in_channels + i * growth_rate,
                growth_rate,
                bn_size,
                drop_rate,
                dtype=dtype,
                conv_general_dilated=conv_general_dilated,
                rngs=rngs,
            )
            setattr(self, f"denselayer{i + 1}", layer)

    def __call__(self, x: Array) -> Array:
        # By name, not attribute order: nnx may reorder attributes (denselayer10 < denselayer2).
        for i in range(self.num_layers):
            x = getattr(self, f"denselayer{i + 1}")(x)
        return x


class Transition(nnx.Module):
    """BN-ReLU-1x1 conv to `out_channels`, then 2x2 stride-2 average pooling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dtype: jnp.dtype,
        conv_general_dilated: ConvFunction,
        rngs: nnx.Rngs,
    ):
        self.norm = layers.batch_norm(in_channels, dtype=dtype, rngs=rngs)
        self.conv = _conv(
            in_channels,
            out_channels,
            1,
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )

    def __call__(self, x: Array) -> Array:
        return layers.avg_pool(self.conv(jax.nn.relu(self.norm(x))), 2, 2)


class DenseNet(Classifier):
    """Stem, dense blocks with transitions between them, BN-ReLU, global pooling, linear."""

    def __init__(
        self,
        *,
        num_classes: int,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        bn_size: int,
        compression: float,
        stem: str,
        drop_rate: float,
        fc_init_std: float,
        dtype: jnp.dtype,
        conv: ConvImpl,
        rngs: nnx.Rngs,
    ):
        self.stem = stem
        self.num_blocks = len(block_config)
        build = {"dtype": dtype, "conv_general_dilated": conv.outside_scan, "rngs": rngs}
        if stem == "imagenet":
            self.conv0 = _conv(3, num_init_features, 7, stride=2, **build)
            self.norm0 = layers.batch_norm(num_init_features, dtype=dtype, rngs=rngs)
        else:
            self.conv0 = _conv(3, num_init_features, 3, **build)
        channels = num_init_features
        for i, num_layers in enumerate(block_config, start=1):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, drop_rate, **build)
            setattr(self, f"denseblock{i}", block)
            channels += num_layers * growth_rate
            if i < self.num_blocks:
                reduced = math.floor(compression * channels)
                setattr(self, f"transition{i}", Transition(channels, reduced, **build))
                channels = reduced
        self.norm5 = layers.batch_norm(channels, dtype=dtype, rngs=rngs)
        self.classifier = layers.classifier_fc(
            channels,
            num_classes,
            init_std=fc_init_std,
            bias_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            rngs=rngs,
        )

    def forward_features(self, x: Array) -> dict[str, Array]:
        x = self.conv0(x)
        if self.stem == "imagenet":
            x = layers.max_pool(jax.nn.relu(self.norm0(x)), 3, 2, 1)
        feats = {"stem": x}
        for i in range(1, self.num_blocks + 1):
            if i > 1:
                x = getattr(self, f"transition{i - 1}")(x)
            x = getattr(self, f"denseblock{i}")(x)
            feats[f"stage{i}"] = x
        feats["pre_logits"] = layers.global_avg_pool(jax.nn.relu(self.norm5(x)))
        return feats

    def head(self, pre_logits: Array) -> Array:
        return self.classifier(pre_logits)


def densenet(
    *,
    num_classes: int,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    growth_rate: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    num_init_features: int | None = None,
    bn_size: int = 4,
    compression: float = 0.5,
    stem: str = "imagenet",
    drop_rate: float = 0.0,
    fc_init_std: float = 0.0,
) -> DenseNet:
    """A DenseNet-BC; `num_init_features` defaults to 2 * growth_rate. Bad values: ValueError."""
    check_positive_int("growth_rate", growth_rate)
    check_positive_int("bn_size", bn_size)
    if num_init_features is None:
        num_init_features = 2 * growth_rate
    check_positive_int("num_init_features", num_init_features)
    is_sequence = isinstance(block_config, Sequence) and not isinstance(block_config, str | bytes)
    check("block_config", block_config, "a sequence of positive ints", is_sequence)
    if not block_config:
        raise ValueError("block_config must hold at least one block, got ()")
    for num_layers in block_config:
        check_positive_int(f"every entry of block_config {tuple(block_config)!r}", num_layers)
    check("compression", compression, "in (0, 1]", is_number(compression) and 0 < compression <= 1)
    check_choice("stem", stem, STEMS)
    check_rate("drop_rate", drop_rate)
    check_non_negative("fc_init_std", fc_init_std)
    return DenseNet(
        num_classes=num_classes,
        growth_rate=growth_rate,
        block_config=tuple(block_config),
        num_init_features=num_init_features,
        bn_size=bn_size,
        compression=compression,
        stem=stem,
        drop_rate=drop_rate,
        fc_init_std=fc_init_std,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


for _name, _architecture in (
    ("densenet121", {"block_config": (6, 12, 24, 16)}),
    ("densenet161", {"growth_rate": 48, "block_config": (6, 12, 36, 24)}),
    ("densenet169", {"block_config": (6, 12, 32, 32)}),
    ("densenet201", {"block_config": (6, 12, 48, 32)}),
):
    register(_name, functools.partial(densenet, **_architecture), family="densenet")
# Huang et al. 2017, Table 1.
register(
    "densenet264",
    functools.partial(densenet, block_config=(6, 12, 64, 48)),
    family="densenet",
    structure="paper",
)
# Huang et al. 2017, Sec. 3/4: DenseNet-BC, L=100, k=12, three blocks of (100 - 4) / 6 layers.
register(
    "densenet_bc_100_12",
    functools.partial(densenet, growth_rate=12, block_config=(16, 16, 16), stem="cifar"),
    family="densenet",
    structure="paper",
    preprocessing=CIFAR10,
    num_classes=10,
)

"""GoogLeNet (Szegedy et al. 2015): torchvision's `googlenet` and the paper's `inception_v1`.

Both are one network, `GoogLeNet`, made of one `Inception` module class driven by the widths of
the paper's Table 1 (`TABLE1`, which torchvision keeps too). A `Variant` holds what differs:

    googlenet (torchvision 0.29)             inception_v1 (the paper, as Caffe's bvlc_googlenet)
    conv + BN(eps 1e-3) + ReLU, no bias      conv + bias + ReLU
    "5x5" branch with a 3x3 kernel (a        5x5 branch
      known torchvision quirk, kept)
    no LRN                                   LRN after the stem pool and after conv3
    maxpool4 2x2/2                           maxpool4 3x3/2
    aux: adaptive avg pool to 4x4            aux: 5x5/3 avg pool (4x4 only from 14x14, i.e. at
                                               224x224 input: fc1 takes 4 x 4 x 128 inputs)
    trunc. normal std 0.01 weights           Caffe's xavier weights, bias 0.2 (0 on classifiers)

All max pools are ceil-mode, as PyTorch's ceil_mode=True and Caffe's pooling. Overrides:
`aux_logits` (build the aux heads, default True; they run only in training mode),
`reduction_1x1` (False removes every Inception module's #3x3 and #5x5 reduce convolutions, the
paper's "1x1 reductions" ablation; pool proj stays), `drop_rate` (before `fc`), `aux_drop_rate`;
`googlenet` also takes `transform_input` (default False): True maps ImageNet-normalised input to
the (x - 0.5) / 0.5 scaling that torchvision's pretrained GoogLeNet weights were trained with,
as torchvision does when it loads them.

Module paths are torchvision's: conv1..conv3, inception3a..inception5b (branch1 a conv unit;
branch2, branch3 lists [reduce, conv]; branch4 the list [MaxPool, pool proj], the pool holding
index 0 as in torchvision's nn.Sequential), aux1/aux2 (conv, fc1, fc2) and fc; conv units are
`ConvNormAct` (`conv`, `bn`) as torchvision's BasicConv2d. A torch key is therefore our path
plus the torch variable name, with no renames (`inception3a.branch4.1.conv.kernel` <->
`inception3a.branch4.1.conv.weight`). inception_v1 has the same paths without `bn`; without
1x1 reductions branch2 and branch3 are one-element lists.

`features(x)` holds `stem` (after maxpool2), `stage1` (inception3b), `inception4a` and
`inception4d` (the aux heads' inputs), `stage2` (inception4e), `stage3` (inception5b) and
`pre_logits`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.checks import check_flag, check_rate
from archs.classifier import Classifier
from archs.convolution import LAX, ConvImpl
from archs.registry import IMAGENET_MEAN, IMAGENET_STD, register

Array = jax.Array


class InceptionWidths(NamedTuple):
    """One row of Table 1: the output channels of an Inception module's convolutions."""

    conv1x1: int
    reduce3x3: int
    conv3x3: int
    reduce5x5: int
    conv5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.conv1x1 + self.conv3x3 + self.conv5x5 + self.pool_proj


# Szegedy et al. 2015, Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
TABLE1: dict[str, InceptionWidths] = {
    "inception3a": InceptionWidths(64, 96, 128, 16, 32, 32),
    "inception3b": InceptionWidths(128, 128, 192, 32, 96, 64),
    "inception4a": InceptionWidths(192, 96, 208, 16, 48, 64),
    "inception4b": InceptionWidths(160, 112, 224, 24, 64, 64),
    "inception4c": InceptionWidths(128, 128, 256, 24, 64, 64),
    "inception4d": InceptionWidths(112, 144, 288, 32, 64, 64),
    "inception4e": InceptionWidths(256, 160, 320, 32, 128, 128),
    "inception5a": InceptionWidths(256, 160, 320, 32, 128, 128),
    "inception5b": InceptionWidths(384, 192, 384, 48, 128, 128),
}
STAGES = (
    ("inception3a", "inception3b"),
    ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
    ("inception5a", "inception5b"),
)
"""The Inception modules after maxpool2, maxpool3 and maxpool4."""


def adaptive_4x4(x: Array) -> Array:
    """torchvision's aux-head pooling: adaptive average pooling to 4x4."""
    return layers.adaptive_avg_pool(x, 4)


def avg_5x5_stride_3(x: Array) -> Array:
    """The paper's aux-head pooling: 5x5 average pooling with stride 3 (14x14 -> 4x4)."""
    return layers.avg_pool(x, 5, 3)


tv_trunc_normal = nnx.initializers.truncated_normal(stddev=0.01, lower=-200.0, upper=200.0)
"""torchvision's trunc_normal_(std=0.01, a=-2, b=2): its bounds are absolute, i.e. +-200 std."""

caffe_xavier = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
"""Caffe's "xavier" filler: U(+-sqrt(3 / fan_in))."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """What distinguishes the two GoogLeNets (see the module docstring's table)."""

    batch_norm: bool
    kernel_5x5: int
    lrn: bool
    pool4_kernel: int
    aux_pool: Callable[[Array], Array]
    kernel_init: nnx.Initializer
    hidden_bias_init: nnx.Initializer | None
    """Conv biases and aux fc1's bias; None: no conv bias, PyTorch's default Linear bias."""
    classifier_bias_init: nnx.Initializer | None
    """fc's and aux fc2's bias; None: PyTorch's default Linear bias."""


TORCHVISION = Variant(
    batch_norm=True,
    kernel_5x5=3,
    lrn=False,
    pool4_kernel=2,
    aux_pool=adaptive_4x4,
    kernel_init=tv_trunc_normal,
    hidden_bias_init=None,
    classifier_bias_init=None,
)
PAPER = Variant(
    batch_norm=False,
    kernel_5x5=5,
    lrn=True,
    pool4_kernel=3,
    aux_pool=avg_5x5_stride_3,
    kernel_init=caffe_xavier,
    hidden_bias_init=nnx.initializers.constant(0.2),
    classifier_bias_init=nnx.initializers.zeros_init(),
)

ConvUnit = Callable[..., layers.ConvNormAct]
"""`conv(in_channels, out_channels, kernel_size, **kwargs)`: the variant's conv unit."""


def conv_unit(variant: Variant, dtype: jnp.dtype, rngs: nnx.Rngs, conv: ConvImpl = LAX) -> ConvUnit:
    """torchvision's BasicConv2d or the paper's conv + bias + ReLU, with their inits."""
    return functools.partial(
        layers.ConvNormAct,
        norm=variant.batch_norm,
        bn_eps=1e-3,
        kernel_init=variant.kernel_init,
        bias_init=variant.hidden_bias_init,
        dtype=dtype,
        conv_general_dilated=conv.outside_scan,
        rngs=rngs,
    )


def dense(
    variant: Variant,
    in_features: int,
    out_features: int,
    bias_init: nnx.Initializer | None,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    return layers.linear(
        in_features,
        out_features,
        kernel_init=variant.kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        rngs=rngs,
    )


class Inception(nnx.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 reduce -> 3x3; 1x1 reduce ->
    "5x5" (`kernel_5x5`); 3x3/1 max pool -> 1x1 pool proj. Without `reduction_1x1` the 3x3 and
    5x5 convolutions read the module's input directly."""

    def __init__(
        self,
        in_channels: int,
        widths: InceptionWidths,
        *,
        conv: ConvUnit,
        kernel_5x5: int,
        reduction_1x1: bool = True,
    ):
        def tower(reduce: int, out: int, kernel: int) -> nnx.List:
            if not reduction_1x1:
                return nnx.List([conv(in_channels, out, kernel)])
            return nnx.List([conv(in_channels, reduce, 1), conv(reduce, out, kernel)])

        self.branch1 = conv(in_channels, widths.conv1x1, 1)
        self.branch2 = tower(widths.reduce3x3, widths.conv3x3, 3)
        self.branch3 = tower(widths.reduce5x5, widths.conv5x5, kernel_5x5)
        self.branch4 = nnx.List(
            [layers.MaxPool(3, 1, 1, ceil_mode=True), conv(in_channels, widths.pool_proj, 1)]
        )

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate(
            [
                self.branch1(x),
                layers.apply_in_order(self.branch2, x),
                layers.apply_in_order(self.branch3, x),
                layers.apply_in_order(self.branch4, x),
            ],
            axis=-1,
        )


class InceptionAux(nnx.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv 128, fc 1024 + ReLU, dropout, fc."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        variant: Variant,
        drop_rate: float,
        dtype: jnp.dtype,
        conv: ConvImpl,
        rngs: nnx.Rngs,
    ):
        self.pool = variant.aux_pool
        self.conv = conv_unit(variant, dtype, rngs, conv)(in_channels, 128, 1)
        self.fc1 = dense(variant, 4 * 4 * 128, 1024, variant.hidden_bias_init, dtype, rngs)
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc2 = dense(variant, 1024, num_classes, variant.classifier_bias_init, dtype, rngs)

    def __call__(self, x: Array) -> Array:
        x = self.conv(self.pool(x))
        # Flatten in PyTorch's (C, H, W) order, so that converted fc1 weights apply unchanged.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        return self.fc2(self.dropout(x))


def transform_input(x: Array) -> Array:
    """torchvision's `transform_input`: ImageNet-normalised input -> (x' - 0.5) / 0.5 of the
    same image x' in [0, 1], the scaling torchvision's pretrained GoogLeNet expects."""
    scale = jnp.asarray([s / 0.5 for s in IMAGENET_STD], x.dtype)
    shift = jnp.asarray([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], x.dtype)
    return x * scale + shift


class GoogLeNet(Classifier):
    """GoogLeNet of a `Variant`: stem, Inception modules of Table 1, aux heads, dropout, fc."""

    def __init__(
        self,
        variant: Variant,
        *,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        reduction_1x1: bool = True,
        drop_rate: float,
        aux_drop_rate: float = 0.7,
        dtype: jnp.dtype = jnp.float32,
        conv: ConvImpl = LAX,
        rngs: nnx.Rngs,
    ):
        unit = conv_unit(variant, dtype, rngs, conv)
        self.transform_input = transform_input
        self.conv1 = unit(3, 64, 7, stride=2)
        self.conv2 = unit(64, 64, 1)
        self.conv3 = unit(64, 192, 3)
        # Caffe's LRN(local_size 5, alpha 1e-4, beta 0.75, k 1) divides alpha by the size.
        self.lrn = layers.LocalResponseNorm(5, 1e-4 / 5, 0.75, 1.0) if variant.lrn else None
        self.pool4_kernel = variant.pool4_kernel
        channels = 192
        for name in (n for stage in STAGES for n in stage):
            block = Inception(
                channels,
                TABLE1[name],
                conv=unit,
                kernel_5x5=variant.kernel_5x5,
                reduction_1x1=reduction_1x1,
            )
            setattr(self, name, block)
            channels = TABLE1[name].out_channels
        aux = functools.partial(
            InceptionAux,
            num_classes=num_classes,
            variant=variant,
            drop_rate=aux_drop_rate,
            dtype=dtype,
            conv=conv,
            rngs=rngs,
        )
        self.aux1 = aux(TABLE1["inception4a"].out_channels) if aux_logits else None
        self.aux2 = aux(TABLE1["inception4d"].out_channels) if aux_logits else None
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc = dense(variant, channels, num_classes, variant.classifier_bias_init, dtype, rngs)

    def _lrn(self, x: Array) -> Array:
        return x if self.lrn is None else self.lrn(x)

    def forward_features(self, x: Array) -> dict[str, Array]:
        if self.transform_input:
            x = transform_input(x)
        feats = {}
        x = layers.max_pool(self.conv1(x), 3, 2, ceil_mode=True)
        x = self.conv3(self.conv2(self._lrn(x)))
        x = feats["stem"] = layers.max_pool(self._lrn(x), 3, 2, ceil_mode=True)
        for name in STAGES[0]:
            x = getattr(self, name)(x)
        feats["stage1"] = x
        x = layers.max_pool(x, 3, 2, ceil_mode=True)
        for name in STAGES[1]:
            x = getattr(self, name)(x)
            if name in ("inception4a", "inception4d"):
                feats[name] = x
        feats["stage2"] = x
        x = layers.max_pool(x, self.pool4_kernel, 2, ceil_mode=True)
        for name in STAGES[2]:
            x = getattr(self, name)(x)
        feats["stage3"] = x
        feats["pre_logits"] = layers.global_avg_pool(x)
        return feats

    def head(self, pre_logits: Array) -> Array:
        return self.fc(self.dropout(pre_logits))

    def aux_logits(self, features: dict[str, Array]) -> tuple[Array, ...]:
        if self.aux1 is None:
            return ()
        return self.aux1(features["inception4a"]), self.aux2(features["inception4d"])


def googlenet(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    aux_logits: bool = True,
    transform_input: bool = False,
    reduction_1x1: bool = True,
    drop_rate: float = 0.2,
    aux_drop_rate: float = 0.7,
) -> GoogLeNet:
    """torchvision 0.29's `googlenet` (BatchNorm, 3x3 "5x5" branch)."""
    check_flag("aux_logits", aux_logits)
    check_flag("transform_input", transform_input)
    check_flag("reduction_1x1", reduction_1x1)
    check_rate("drop_rate", drop_rate)
    check_rate("aux_drop_rate", aux_drop_rate)
    return GoogLeNet(
        TORCHVISION,
        num_classes=num_classes,
        aux_logits=aux_logits,
        transform_input=transform_input,
        reduction_1x1=reduction_1x1,
        drop_rate=drop_rate,
        aux_drop_rate=aux_drop_rate,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


def inception_v1(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    aux_logits: bool = True,
    reduction_1x1: bool = True,
    drop_rate: float = 0.4,
    aux_drop_rate: float = 0.7,
) -> GoogLeNet:
    """The paper's GoogLeNet (Table 1 with biases, 5x5 branches, LRN, no BatchNorm)."""
    check_flag("aux_logits", aux_logits)
    check_flag("reduction_1x1", reduction_1x1)
    check_rate("drop_rate", drop_rate)
    check_rate("aux_drop_rate", aux_drop_rate)
    return GoogLeNet(
        PAPER,
        num_classes=num_classes,
        aux_logits=aux_logits,
        reduction_1x1=reduction_1x1,
        drop_rate=drop_rate,
        aux_drop_rate=aux_drop_rate,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


register("googlenet", googlenet, family="googlenet", aux_weight=0.3)
register("inception_v1", inception_v1, family="googlenet", structure="paper", aux_weight=0.3)

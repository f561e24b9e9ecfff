"""Inception-ResNet-v2 (Szegedy et al. 2017) as timm 1.0's `inception_resnet_v2`, at 299x299.

Stem (conv2d_1a..conv2d_4a, two 3x3/2 max pools), mixed_5b, 10 Block35 (`repeat`, residual
scale 0.17), mixed_6a, 20 Block17 (`repeat_1`, 0.10), mixed_7a, 9 Block8 (`repeat_2`, 0.20), a
last Block8 without ReLU (`block8`, scale 1), conv2d_7b (1536), global average pool, dropout
(`drop_rate`, timm's, default 0) and `classif` (`fc_init_std` > 0: its weights from N(0,
fc_init_std) and zero bias, Goyal et al. 2017, Sec. 5.1; 0: PyTorch's default). Every conv unit
is conv (no bias) + BatchNorm (eps 1e-3) + ReLU with timm's explicit paddings (0 unless
stated); the blocks' 1x1 `conv2d` has a bias and no norm. The blocks are tables of branches
(`MIXED_5B`, `BLOCK35`, ...) built by two classes, `Mixed` (branches concatenated) and
`ResidualBlock` (`Mixed` + 1x1 conv + scaled residual). PyTorch's default initialisation
throughout, as timm leaves it.

`drop_path_rate` (not in timm's model; default 0): stochastic depth (Huang et al. 2016) over
the 40 residual blocks (`repeat`, `repeat_1`, `repeat_2`, `block8`, in that order): in
training, block i's scaled branch is dropped per example with probability
drop_path_rate * i / 39 and divided by 1 - p when kept; the identity in eval mode. Its draws
come from the `dropout` RNG stream, which the train step reseeds every step.

Module paths are timm's, so a timm key is our path plus the torch variable name with no
renames: `repeat.0.branch1.1.conv.kernel` <-> `repeat.0.branch1.1.conv.weight`. A branch of
one layer is that layer (`branch0.conv`), a longer one a list whose indices are timm's
nn.Sequential indices, pools included (`mixed_5b.branch3.1.conv`: index 0 is the pool).

`features(x)` holds `stem` (after maxpool_5a, 192 channels), `stage1` (after `repeat`, 320),
`stage2` (after `repeat_1`, 1088), `stage3` (after conv2d_7b, 1536) and `pre_logits`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.checks import check_non_negative, check_rate
from archs.classifier import Classifier
from archs.convolution import LAX, ConvFunction, ConvImpl
from archs.registry import INCEPTION_MEAN, INCEPTION_STD, Preprocessing, register

Array = jax.Array


class Conv(NamedTuple):
    """A conv unit (conv + BN + ReLU) of a branch."""

    out: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0


class Pool(NamedTuple):
    """A pooling step of a branch: 'max', or 'avg' (timm's count_include_pad=False)."""

    kind: str
    kernel: int
    stride: int
    padding: int = 0


Branch = tuple[Conv | Pool, ...]

MIXED_5B: tuple[Branch, ...] = (
    (Conv(96, 1),),
    (Conv(48, 1), Conv(64, 5, padding=2)),
    (Conv(64, 1), Conv(96, 3, padding=1), Conv(96, 3, padding=1)),
    (Pool("avg", 3, 1, 1), Conv(64, 1)),
)
BLOCK35: tuple[Branch, ...] = (
    (Conv(32, 1),),
    (Conv(32, 1), Conv(32, 3, padding=1)),
    (Conv(32, 1), Conv(48, 3, padding=1), Conv(64, 3, padding=1)),
)
MIXED_6A: tuple[Branch, ...] = (
    (Conv(384, 3, stride=2),),
    (Conv(256, 1), Conv(256, 3, padding=1), Conv(384, 3, stride=2)),
    (Pool("max", 3, 2),),
)
BLOCK17: tuple[Branch, ...] = (
    (Conv(192, 1),),
    (Conv(128, 1), Conv(160, (1, 7), padding=(0, 3)), Conv(192, (7, 1), padding=(3, 0))),
)
MIXED_7A: tuple[Branch, ...] = (
    (Conv(256, 1), Conv(384, 3, stride=2)),
    (Conv(256, 1), Conv(288, 3, stride=2)),
    (Conv(256, 1), Conv(288, 3, padding=1), Conv(320, 3, stride=2)),
    (Pool("max", 3, 2),),
)
BLOCK8: tuple[Branch, ...] = (
    (Conv(192, 1),),
    (Conv(192, 1), Conv(224, (1, 3), padding=(0, 1)), Conv(256, (3, 1), padding=(1, 0))),
)
REPEATS = {"repeat": 10, "repeat_1": 20, "repeat_2": 9}
SCALES = {"repeat": 0.17, "repeat_1": 0.10, "repeat_2": 0.20}


def conv_unit(
    in_channels: int, spec: Conv, dtype: jnp.dtype, conv: ConvFunction, rngs: nnx.Rngs
) -> layers.ConvNormAct:
    """timm's conv unit: conv without bias, BatchNorm(eps 1e-3), ReLU; PyTorch's default init."""
    return layers.ConvNormAct(
        in_channels,
        spec.out,
        spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        bn_eps=1e-3,
        kernel_init=layers.torch_default_init,
        dtype=dtype,
        conv_general_dilated=conv,
        rngs=rngs,
    )


def build_branch(
    in_channels: int, branch: Branch, dtype: jnp.dtype, conv: ConvFunction, rngs: nnx.Rngs
) -> tuple[nnx.Module, int]:
    """The branch's layers (the layer itself when it is one) and its output channels."""
    steps, channels = [], in_channels
    for spec in branch:
        if isinstance(spec, Pool):
            steps.append(
                layers.MaxPool(spec.kernel, spec.stride, spec.padding)
                if spec.kind == "max"
                else layers.AvgPool(spec.kernel, spec.stride, spec.padding, count_include_pad=False)
            )
        else:
            steps.append(conv_unit(channels, spec, dtype, conv, rngs))
            channels = spec.out
    return (steps[0] if len(steps) == 1 else nnx.List(steps)), channels


class Mixed(nnx.Module):
    """Parallel branches `branch0`, `branch1`, ... concatenated on channels (timm's Mixed_*)."""

    def __init__(
        self,
        in_channels: int,
        branches: tuple[Branch, ...],
        *,
        dtype: jnp.dtype = jnp.float32,
        conv_general_dilated: ConvFunction,
        rngs: nnx.Rngs,
    ):
        self.num_branches = len(branches)
        self.concat_channels = 0
        for i, branch in enumerate(branches):
            module, channels = build_branch(in_channels, branch, dtype, conv_general_dilated, rngs)
            setattr(self, f"branch{i}", module)
            self.concat_channels += channels

    def __call__(self, x: Array) -> Array:
        outs = [
            layers.apply_in_order(getattr(self, f"branch{i}"), x) for i in range(self.num_branches)
        ]
        return jnp.concatenate(outs, axis=-1)


class ResidualBlock(Mixed):
    """timm's Block35/Block17/Block8: branches, a 1x1 conv (with bias) back to `channels`,
    x + scale * that, then ReLU unless `relu` is False."""

    def __init__(
        self,
        channels: int,
        branches: tuple[Branch, ...],
        *,
        scale: float,
        relu: bool = True,
        dtype: jnp.dtype = jnp.float32,
        conv_general_dilated: ConvFunction,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            channels, branches, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs
        )
        self.conv2d = layers.conv2d(
            self.concat_channels,
            channels,
            1,
            bias=True,
            kernel_init=layers.torch_default_init,
            bias_init=layers.torch_default_bias_init(self.concat_channels),
            dtype=dtype,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )
        self.scale = scale
        self.relu = relu

    def __call__(self, x: Array, drop: tuple[Array, Array] | None = None) -> Array:
        """`drop`: (key, rate) to drop the residual branch per example (`layers.drop_path`)."""
        branch = self.conv2d(super().__call__(x)) * self.scale
        if drop is not None:
            branch = layers.drop_path(branch, drop[1], drop[0])
        out = branch + x
        return jax.nn.relu(out) if self.relu else out


class InceptionResNetV2(Classifier):
    """timm's InceptionResnetV2 (see the module docstring)."""

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        fc_init_std: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        conv: ConvImpl = LAX,
        rngs: nnx.Rngs,
    ):
        build = {"dtype": dtype, "conv_general_dilated": conv.outside_scan, "rngs": rngs}

        def unit(cin: int, spec: Conv) -> layers.ConvNormAct:
            return conv_unit(cin, spec, dtype, conv.outside_scan, rngs)

        def repeat(channels: int, branches: tuple[Branch, ...], name: str) -> nnx.List:
            return nnx.List(
                [
                    ResidualBlock(channels, branches, scale=SCALES[name], **build)
                    for _ in range(REPEATS[name])
                ]
            )

        self.conv2d_1a = unit(3, Conv(32, 3, stride=2))
        self.conv2d_2a = unit(32, Conv(32, 3))
        self.conv2d_2b = unit(32, Conv(64, 3, padding=1))
        self.conv2d_3b = unit(64, Conv(80, 1))
        self.conv2d_4a = unit(80, Conv(192, 3))
        self.mixed_5b = Mixed(192, MIXED_5B, **build)
        self.repeat = repeat(320, BLOCK35, "repeat")
        self.mixed_6a = Mixed(320, MIXED_6A, **build)
        self.repeat_1 = repeat(1088, BLOCK17, "repeat_1")
        self.mixed_7a = Mixed(1088, MIXED_7A, **build)
        self.repeat_2 = repeat(2080, BLOCK8, "repeat_2")
        self.block8 = ResidualBlock(2080, BLOCK8, scale=1.0, relu=False, **build)
        self.conv2d_7b = unit(2080, Conv(1536, 1))
        self.head_drop = nnx.Dropout(drop_rate, rngs=rngs)
        self.classif = layers.classifier_fc(
            1536, num_classes, init_std=fc_init_std, dtype=dtype, rngs=rngs
        )
        self.drop_path_rates = tuple(
            layers.drop_path_rates(drop_path_rate, sum(REPEATS.values()) + 1)
        )
        # Last, so that the parameters are drawn as without drop path.
        self.drop_path_rngs = rngs["dropout"].fork() if drop_path_rate else None

    def forward_features(self, x: Array) -> dict[str, Array]:
        key = layers.drop_path_key(self.drop_path_rngs, self.deterministic)
        drops = layers.block_drops(key, 0, self.drop_path_rates)

        def residual_blocks(blocks: list[ResidualBlock], x: Array, first: int) -> Array:
            """Blocks `first`, `first + 1`, ... of the network's residual blocks."""
            for i, block in enumerate(blocks, start=first):
                x = block(x, None if drops is None else (drops[0][i], drops[1][i]))
            return x

        feats = {}
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = layers.max_pool(x, 3, 2)  # maxpool_3a
        x = self.conv2d_4a(self.conv2d_3b(x))
        x = feats["stem"] = layers.max_pool(x, 3, 2)  # maxpool_5a
        first_1, first_2 = len(self.repeat), len(self.repeat) + len(self.repeat_1)
        x = feats["stage1"] = residual_blocks(self.repeat, self.mixed_5b(x), 0)
        x = feats["stage2"] = residual_blocks(self.repeat_1, self.mixed_6a(x), first_1)
        x = residual_blocks(self.repeat_2, self.mixed_7a(x), first_2)
        x = residual_blocks([self.block8], x, first_2 + len(self.repeat_2))
        x = feats["stage3"] = self.conv2d_7b(x)
        feats["pre_logits"] = layers.global_avg_pool(x)
        return feats

    def head(self, pre_logits: Array) -> Array:
        return self.classif(self.head_drop(pre_logits))


def inception_resnet_v2(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    fc_init_std: float = 0.0,
) -> InceptionResNetV2:
    """timm 1.0's `inception_resnet_v2` (see the module docstring for the overrides)."""
    check_rate("drop_rate", drop_rate)
    check_rate("drop_path_rate", drop_path_rate)
    check_non_negative("fc_init_std", fc_init_std)
    return InceptionResNetV2(
        num_classes=num_classes,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        fc_init_std=fc_init_std,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


register(
    "inception_resnet_v2",
    inception_resnet_v2,
    family="inception_resnet",
    structure="timm",
    preprocessing=Preprocessing(
        image_size=299,
        crop_pct=0.8975,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        interpolation="bicubic",
    ),
)

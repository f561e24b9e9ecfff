"""One generic residual network: ResNet, plain, ResNeXt, SE-ResNet/SE-ResNeXt/SENet-154, CIFAR nets.

Every variant is a registry entry of `ResNet` with different parts (He et al. 2016; Xie et al. 2017;
Hu et al. 2018), and every part is a keyword override of `create_model`:
- `stem`: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max pool), 'cifar' (3x3 conv, BN, ReLU, no pool)
  or 'deep' (3x3/2 `stem_width`, 3x3 `stem_width`, 3x3 2*`stem_width`, BN, ReLU, max pool: the
  SENet-154 stem); `stem_width` (64; the CIFAR nets' 16);
- `block`: 'basic' (two 3x3) or 'bottleneck' (1x1, 3x3 with `groups`, 1x1 expanding 4x), the
  bottleneck width `floor(planes * width_per_group / 64) * groups` as torchvision and timm, the
  first 1x1 `width // reduce_first` wide (SENet-154: 2, timm's `block_reduce_first`);
- `shortcut`: 'A' (stride subsampling and zero channel padding split evenly on both sides, no
  parameters), 'B' (projection where the shape changes), 'C' (projection on every block), 'none'
  (a plain net);
- `stride_in`: '3x3' (torchvision v1.5, timm) or '1x1' (the paper and Caffe, v1);
- `attention`: 'none' or 'se' (squeeze-excitation on the residual branch before the addition),
  its hidden width `se_reduction`-fold smaller, rounded as timm to the nearest multiple of
  `se_divisor` and at least `se_divisor` (timm's `make_divisible(c / r, 8, round_limit=0)`;
  `se_divisor=1` gives the paper's C/r when r divides C);
- `zero_init_residual` (the last BN scale of each block starts at 0), `depths` (blocks per stage),
  `widths` (planes per stage; the first stage keeps the resolution, the others halve it);
- `downsample_kernel`: 1, or 3 for SENet-154's 3x3 projections (padding 1) in the blocks that
  stride (timm's `down_kernel_size=3`, which keeps 1x1 where the stride is 1);
- `pool_ceil_mode`: the stem's max pool in ceil mode without padding, as Caffe and timm's
  `legacy_senet154` (PyTorch MaxPool2d(3, 2, ceil_mode=True)); default padding 1, floor mode;
- `drop_rate`: dropout before `fc` (timm's legacy SENet-154: 0.2); `fc_init_std`: 0 for
  `fc`'s PyTorch-default initialisation, > 0 for weights from N(0, fc_init_std) and zero bias
  (Goyal et al. 2017, Sec. 5.1: 0.01);
- `drop_path_rate`: stochastic depth (Huang et al. 2016): in training, each block's residual
  branch is dropped per example with a probability rising linearly over the blocks of the
  network, from 0 at the first to `drop_path_rate` at the last (block i of N: rate * i /
  (N - 1), as timm), and scaled by 1 / (1 - p) when kept; the identity in eval mode. Its draws
  come from the `dropout` RNG stream (which the train step reseeds every step), each block
  its own; not for `shortcut='none'`;
- `scan_blocks`: run the identical blocks of a stage (all but the first) as one `nnx.scan` over
  stacked parameters, so XLA compiles one block per stage instead of each (the same function,
  compiled much faster for the deep nets; the scanned convolutions call the `inside_scan`
  function of the model's `conv`, see `archs.convolution`); `remat`: recompute each block's
  activations in the backward pass (`nnx.remat`) instead of storing them (less memory, about
  one more forward);
- `block_barrier`: end every block with `jax.lax.optimization_barrier` on its output (the
  identity, so the same function and parameters), which stops XLA from fusing a block's
  elementwise tail (BatchNorm, addition, ReLU) into the consumers of later blocks. XLA:CPU
  otherwise recomputes a stage's whole residual stream, block by block, inside the transposes
  and masks of every block's backward pass: work quadratic in depth, so resnet110's unrolled
  step costs about twice resnet20's per FLOP (docs/benchmarks.md, "Why deep nets cost more per
  layer on the CPU"). 'auto' (the default) resolves with `jax.default_backend()` when the
  model is built: on for the CPU, off elsewhere (GPU programs stay as they were); True or
  False forces either;
- `scan_stages`: run the same blocks (a stage's all but the first) through one `jax.lax.scan`
  over their parameters stacked when the model is called, the BatchNorm statistics written back
  to each block, so the model keeps the unscanned layout `layer{i}.{j}` (checkpoints do not
  depend on it) while XLA compiles one block per stage (faster compiles); ignored with
  `scan_blocks`, which already scans.

`senet154` is timm 1.0's `senet154` (timm/models/resnet.py, Gluon's weights): stride on the 3x3,
floor-mode padded stem pool, no dropout; its 20.69 GMACs confirm that layout (the stride on the
1x1 gives 20.23). timm's `legacy_senet154` (the Caffe port, which also strides in the 3x3)
computes the same function as `create_model("senet154", pool_ceil_mode=True, drop_rate=0.2)`
under its own module names (`layer0.conv1|bn1|conv2|bn2|conv3` and `layer0.bn3` for our `conv1.*`
and `bn1`, `se_module` for `se`, `last_linear` for `fc`); `stride_in='1x1'` is the layout of
its `legacy_seresnet*` nets.

Module paths follow torchvision/timm: `conv1`, `bn1`, `layer{i}.{j}.conv1|bn1|conv2|bn2|conv3|bn3`,
`layer{i}.{j}.se.fc1|fc2`, `layer{i}.{j}.downsample.0|1`, `fc`, so a torch key is our path with
`weight` for `kernel`/`scale` (and `running_mean|var` for `mean|var`). One difference: the deep
stem's `conv1` list holds [conv, bn, conv, bn, conv] at our indices 0-4, timm's `conv1.0, conv1.1,
conv1.3, conv1.4, conv1.6` (timm's ReLUs sit at 2 and 5).

With `scan_blocks=True` a stage of n > 1 blocks is `layer{i}` = [first block, stacked blocks]:
`layer{i}.0.*` is torch's `layer{i}.0.*` and every variable of `layer{i}.1.*` has a leading axis
of n - 1 whose index k is torch's `layer{i}.{k + 1}.*` (e.g. resnet50's `layer3.1.conv1.kernel`
is (5, 1, 1, 1024, 256): torch `layer3.1` .. `layer3.5`). `unstack_blocks` / `stack_blocks`
map flat states between the two layouts.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archs import layers
from archs.checks import (
    check,
    check_choice,
    check_flag,
    check_non_negative,
    check_positive_int,
    check_rate,
)
from archs.classifier import Classifier
from archs.convolution import LAX, ConvFunction, ConvImpl
from archs.registry import CIFAR10, Preprocessing, register

Array = jax.Array

BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C", "none")
STRIDE_IN = ("1x1", "3x3")
ATTENTIONS = ("none", "se")
STEMS = ("imagenet", "cifar", "deep")


def se_width(channels: int, reduction: int, divisor: int = 8) -> int:
    """timm's SE hidden width: channels / reduction to the nearest multiple of `divisor`, at
    least `divisor` (timm's make_divisible with round_limit=0)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What every block of a network shares (each part is described in the module docstring);
    a bad value is a ValueError when the config is made."""

    block: str = "bottleneck"
    groups: int = 1
    width_per_group: int = 64
    reduce_first: int = 1
    stride_in: str = "3x3"
    shortcut: str = "B"
    attention: str = "none"
    se_reduction: int = 16
    se_divisor: int = 8
    zero_init_residual: bool = False
    downsample_kernel: int = 1
    barrier: bool = False

    def __post_init__(self):
        check_choice("block", self.block, BLOCKS)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        check_choice("stride_in", self.stride_in, STRIDE_IN)
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("downsample_kernel", self.downsample_kernel, (1, 3))
        for name in ("groups", "width_per_group", "reduce_first", "se_reduction", "se_divisor"):
            check_positive_int(name, getattr(self, name))
        check_flag("zero_init_residual", self.zero_init_residual)
        check_flag("barrier", self.barrier)
        basic_defaults = (self.groups, self.width_per_group, self.reduce_first) == (1, 64, 1)
        if self.block == "basic" and not basic_defaults:
            raise ValueError(
                f"block='basic' supports only groups=1, width_per_group=64, reduce_first=1; got "
                f"groups={self.groups}, width_per_group={self.width_per_group}, "
                f"reduce_first={self.reduce_first}"
            )

    @property
    def expansion(self) -> int:
        """A block's output channels per plane."""
        return 4 if self.block == "bottleneck" else 1


class Block(nnx.Module):
    """A basic or bottleneck residual block with a swappable shortcut and attention."""

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        config: BlockConfig,
        *,
        conv_general_dilated: ConvFunction,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        conv = partial(
            layers.conv2d, dtype=dtype, conv_general_dilated=conv_general_dilated, rngs=rngs
        )
        norm = partial(layers.batch_norm, dtype=dtype, rngs=rngs)
        last_init = nnx.initializers.zeros_init() if config.zero_init_residual else None
        last_norm = partial(norm, scale_init=last_init) if last_init else norm
        self.bottleneck = config.block == "bottleneck"
        out_channels = planes * config.expansion
        if self.bottleneck:
            width = (planes * config.width_per_group // 64) * config.groups
            first = width // config.reduce_first
            stride_1x1, stride_3x3 = (stride, 1) if config.stride_in == "1x1" else (1, stride)
            self.conv1 = conv(in_channels, first, 1, stride=stride_1x1)
            self.bn1 = norm(first)
            self.conv2 = conv(first, width, 3, stride=stride_3x3, groups=config.groups)
            self.bn2 = norm(width)
            self.conv3 = conv(width, out_channels, 1)
            self.bn3 = last_norm(out_channels)
        else:
            self.conv1 = conv(in_channels, planes, 3, stride=stride)
            self.bn1 = norm(planes)
            self.conv2 = conv(planes, planes, 3)
            self.bn2 = last_norm(planes)
        self.se = (
            layers.SqueezeExcite(
                out_channels,
                reduced_channels=se_width(out_channels, config.se_reduction, config.se_divisor),
                dtype=dtype,
                conv_general_dilated=conv_general_dilated,
                rngs=rngs,
            )
            if config.attention == "se"
            else None
        )
        reshape = stride != 1 or in_channels != out_channels
        self.shortcut = config.shortcut
        self.barrier = config.barrier
        self.stride = stride
        self.pad_channels = out_channels - in_channels
        project = config.shortcut == "C" or (config.shortcut == "B" and reshape)
        kernel = config.downsample_kernel if stride != 1 else 1
        self.downsample = (
            nnx.List([conv(in_channels, out_channels, kernel, stride=stride), norm(out_channels)])
            if project
            else None
        )

    def residual(self, x: Array) -> Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(jax.nn.relu(out)))
        if self.se is not None:
            out = self.se(out)
        return out

    def identity(self, x: Array) -> Array:
        if self.downsample is not None:
            return self.downsample[1](self.downsample[0](x))
        if self.stride != 1:
            x = x[:, :: self.stride, :: self.stride, :]
        if self.pad_channels:
            before = self.pad_channels // 2
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (before, self.pad_channels - before)))
        return x

    def __call__(self, x: Array, drop: tuple[Array, Array] | None = None) -> Array:
        """`drop`: (key, rate) to drop the residual branch per example (`layers.drop_path`)."""
        out = self.residual(x)
        if drop is not None:
            out = layers.drop_path(out, drop[1], drop[0])
        if self.shortcut != "none":
            out = out + self.identity(x)
        out = jax.nn.relu(out)
        return jax.lax.optimization_barrier(out) if self.barrier else out


def _call_block(unit: Block, x: Array, drop: tuple[Array, Array] | None) -> Array:
    return unit(x, drop)


def _first(value: Array) -> Array:
    return value[0]


def resolve_block_barrier(value: bool | str, backend: str | None = None) -> bool:
    """`block_barrier` as a bool: 'auto' is True on the CPU (`backend`, default
    `jax.default_backend()`) and False elsewhere."""
    check(
        "block_barrier", value, "'auto', True or False", value == "auto" or isinstance(value, bool)
    )
    if value == "auto":
        return (backend or jax.default_backend()) == "cpu"
    return value


def scan_same_blocks(
    call: Callable[[Block, Array, tuple[Array, Array] | None], Array],
    blocks: Sequence[Block],
    x: Array,
    drops: tuple[Array, Array] | None,
) -> Array:
    """`call` through identically built `blocks` in turn, as one `jax.lax.scan` over their
    states stacked here; each block gets back its own updated state (BatchNorm statistics).
    `drops`: None or (keys, rates) with one entry per block."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *(nnx.state(unit) for unit in blocks))

    def body(carry: Array, inputs: tuple) -> tuple[Array, nnx.State]:
        state, drop = inputs
        unit = nnx.merge(graphdef, state)
        return call(unit, carry, drop), nnx.state(unit)

    out, states = jax.lax.scan(body, x, (stacked, drops))
    for k, unit in enumerate(blocks):
        nnx.update(unit, jax.tree.map(lambda v, k=k: v[k], states))
    return out


def stacked_blocks(blocks: Sequence[Block]) -> Block:
    """Identically built blocks as one Block whose variables are stacked on a new axis 0 (built
    one by one first, so a scanned model starts from the unscanned model's values)."""
    states = [nnx.state(unit) for unit in blocks]
    return nnx.merge(nnx.graphdef(blocks[0]), jax.tree.map(_stack, *states))


def _stack(*values: Array) -> Array:
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return jnp.stack(values)
    # Stacked on the host: eagerly, jnp.stack would compile once per variable shape.
    return jnp.asarray(np.stack(values))


def _block_index(path: tuple) -> int | None:
    """j for a variable of block `layer{i}.{j}` (indices are str in checkpoints), else None."""
    if len(path) > 2 and re.fullmatch(r"layer\d+", str(path[0])):
        return int(path[1])
    return None


def unstack_blocks(flat: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    """A scan_blocks model's flat state (path tuple -> array) in the unscanned layout."""
    out = {}
    for path, value in flat.items():
        if _block_index(path) == 1:
            out.update({(path[0], 1 + k, *path[2:]): value[k] for k in range(value.shape[0])})
        else:
            out[path] = value
    return out


def stack_blocks(flat: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    """An unscanned flat state in the scan_blocks layout (`layer{i}.{k >= 1}` -> `layer{i}.1`)."""
    out, stacks = {}, {}
    for path, value in flat.items():
        index = _block_index(path)
        if index is not None and index >= 1:
            stacks.setdefault((path[0], 1, *path[2:]), {})[index] = value
        else:
            out[path] = value
    for path, blocks in stacks.items():
        out[path] = np.stack([np.asarray(blocks[k]) for k in sorted(blocks)])
    return out


class ResNet(Classifier):
    """The generic network; see the module docstring for every part."""

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        block: str = "bottleneck",
        depths: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        reduce_first: int = 1,
        shortcut: str = "B",
        stride_in: str = "3x3",
        attention: str = "none",
        se_reduction: int = 16,
        se_divisor: int = 8,
        zero_init_residual: bool = False,
        downsample_kernel: int = 1,
        pool_ceil_mode: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        fc_init_std: float = 0.0,
        scan_blocks: bool = False,
        scan_stages: bool = False,
        block_barrier: bool | str = "auto",
        remat: bool = False,
        dtype: jnp.dtype = jnp.float32,
        conv: ConvImpl = LAX,
        rngs: nnx.Rngs,
    ):
        config = BlockConfig(
            block=block,
            groups=groups,
            width_per_group=width_per_group,
            reduce_first=reduce_first,
            stride_in=stride_in,
            shortcut=shortcut,
            attention=attention,
            se_reduction=se_reduction,
            se_divisor=se_divisor,
            zero_init_residual=zero_init_residual,
            downsample_kernel=downsample_kernel,
            barrier=resolve_block_barrier(block_barrier),
        )
        check_choice("stem", stem, STEMS)
        check_positive_int("stem_width", stem_width)
        depths, widths = tuple(depths), tuple(widths)
        if not depths or len(depths) != len(widths) or min(depths) < 1 or min(widths) < 1:
            raise ValueError(
                f"depths={depths} and widths={widths} must be non-empty positive sequences "
                "of equal length"
            )
        channels = [stem_width * (2 if stem == "deep" else 1)]
        channels += [w * config.expansion for w in widths]
        if shortcut == "A" and any(b < a for a, b in itertools.pairwise(channels)):
            raise ValueError(
                f"shortcut='A' pads channels, so widths={widths} must not shrink them "
                f"(stage channels {channels})"
            )
        check_rate("drop_rate", drop_rate)
        check_rate("drop_path_rate", drop_path_rate)
        if drop_path_rate and shortcut == "none":
            raise ValueError(
                f"drop_path_rate={drop_path_rate!r} needs residual blocks; shortcut='none' has "
                "no identity to keep"
            )
        check_non_negative("fc_init_std", fc_init_std)
        for name, value in (
            ("pool_ceil_mode", pool_ceil_mode),
            ("scan_blocks", scan_blocks),
            ("scan_stages", scan_stages),
            ("remat", remat),
        ):
            check_flag(name, value)
        scan_stages = scan_stages and not scan_blocks

        stem_conv = partial(
            layers.conv2d, dtype=dtype, conv_general_dilated=conv.outside_scan, rngs=rngs
        )
        norm = partial(layers.batch_norm, dtype=dtype, rngs=rngs)
        self.stem = stem
        self.pool_ceil_mode = pool_ceil_mode
        if stem == "deep":
            in_channels = stem_width * 2
            self.conv1 = nnx.List(
                [
                    stem_conv(3, stem_width, 3, stride=2),
                    norm(stem_width),
                    stem_conv(stem_width, stem_width, 3),
                    norm(stem_width),
                    stem_conv(stem_width, in_channels, 3),
                ]
            )
        else:
            in_channels = stem_width
            kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
            self.conv1 = stem_conv(3, stem_width, kernel, stride=stride)
        self.bn1 = norm(in_channels)

        rates = layers.drop_path_rates(drop_path_rate, sum(depths))
        starts = list(itertools.accumulate(depths, initial=0))
        self.drop_path_rates = tuple(tuple(rates[a:b]) for a, b in itertools.pairwise(starts))
        self.scan_blocks = scan_blocks
        self.scan_stages = scan_stages
        self.remat = remat
        for index, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            stage = []
            for j in range(depth):
                stride = 2 if index > 0 and j == 0 else 1
                scanned = (scan_blocks or scan_stages) and j > 0
                unit = Block(
                    in_channels,
                    planes,
                    stride,
                    config,
                    conv_general_dilated=conv.inside_scan if scanned else conv.outside_scan,
                    dtype=dtype,
                    rngs=rngs,
                )
                in_channels = planes * config.expansion
                stage.append(unit)
            if scan_blocks and depth > 1:
                stage = [stage[0], stacked_blocks(stage[1:])]
            setattr(self, f"layer{index + 1}", nnx.List(stage))
        self.num_features = in_channels
        self.dropout = nnx.Dropout(drop_rate, rngs=rngs)
        self.fc = layers.classifier_fc(
            in_channels, num_classes, init_std=fc_init_std, dtype=dtype, rngs=rngs
        )
        # Last, so that the parameters are drawn as without drop path.
        self.drop_path_rngs = rngs["dropout"].fork() if drop_path_rate else None

    def forward_stem(self, x: Array) -> Array:
        if self.stem == "deep":
            conv_a, bn_a, conv_b, bn_b, conv_c = self.conv1
            x = jax.nn.relu(bn_a(conv_a(x)))
            x = jax.nn.relu(bn_b(conv_b(x)))
            x = conv_c(x)
        else:
            x = self.conv1(x)
        x = jax.nn.relu(self.bn1(x))
        if self.stem == "cifar":
            return x
        if self.pool_ceil_mode:
            return layers.max_pool(x, 3, 2, 0, ceil_mode=True)
        return layers.max_pool(x, 3, 2, 1)

    def forward_features(self, x: Array) -> dict[str, Array]:
        feats = {"stem": self.forward_stem(x)}
        out = feats["stem"]
        key = layers.drop_path_key(self.drop_path_rngs, self.deterministic)
        call = nnx.remat(_call_block) if self.remat else _call_block
        first = 0
        for index, rates in enumerate(self.drop_path_rates, start=1):
            drops = layers.block_drops(key, first, rates)
            stage = getattr(self, f"layer{index}")
            rest = None if drops is None else jax.tree.map(lambda a: a[1:], drops)
            if self.scan_stages and len(stage) > 1:
                out = call(stage[0], out, None if drops is None else jax.tree.map(_first, drops))
                out = scan_same_blocks(call, list(stage[1:]), out, rest)
                stage = []
            for j, unit in enumerate(stage):
                if self.scan_blocks and j == 1:
                    scan = nnx.scan(call, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)
                    out = scan(unit, out, rest)
                else:
                    own = None if drops is None else jax.tree.map(lambda a, j=j: a[j], drops)
                    out = call(unit, out, own)
            first += len(rates)
            feats[f"stage{index}"] = out
        feats["pre_logits"] = layers.global_avg_pool(out)
        return feats

    def head(self, pre_logits: Array) -> Array:
        return self.fc(self.dropout(pre_logits))


IMAGENET_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

for _depth, _block in ((18, "basic"), (34, "basic"), (50, "bottleneck"), (101, "bottleneck")):
    register(
        f"resnet{_depth}",
        partial(ResNet, block=_block, depths=IMAGENET_DEPTHS[_depth]),
        family="resnet",
    )
register("resnet152", partial(ResNet, depths=IMAGENET_DEPTHS[152]), family="resnet")
for _depth in (18, 34):
    register(
        f"plain{_depth}",
        partial(ResNet, block="basic", depths=IMAGENET_DEPTHS[_depth], shortcut="none"),
        family="resnet",
        structure="paper",
    )

# timm's default weights for resnext101_32x4d (fb_ssl_yfcc100m_ft_in1k) use bilinear resizing.
for _name, _structure, _depth, _groups, _wpg in (
    ("resnext50_32x4d", "torchvision", 50, 32, 4),
    ("resnext101_32x4d", "timm", 101, 32, 4),
    ("resnext101_32x8d", "torchvision", 101, 32, 8),
    ("resnext101_64x4d", "torchvision", 101, 64, 4),
):
    register(
        _name,
        partial(ResNet, depths=IMAGENET_DEPTHS[_depth], groups=_groups, width_per_group=_wpg),
        family="resnext",
        structure=_structure,
    )

# timm's default pretrained configs: bicubic resizing, crop 0.875 but seresnet50's a1_in1k 0.95.
TIMM_SE = Preprocessing(interpolation="bicubic")
for _name, _preprocessing, _architecture in (
    ("seresnet50", dataclasses.replace(TIMM_SE, crop_pct=0.95), {}),
    ("seresnet101", TIMM_SE, {"depths": IMAGENET_DEPTHS[101]}),
    ("seresnet152", TIMM_SE, {"depths": IMAGENET_DEPTHS[152]}),
    ("seresnext50_32x4d", TIMM_SE, {"groups": 32, "width_per_group": 4}),
    (
        "seresnext101_32x4d",
        TIMM_SE,
        {"depths": IMAGENET_DEPTHS[101], "groups": 32, "width_per_group": 4},
    ),
    (
        "senet154",
        TIMM_SE,
        {
            "depths": IMAGENET_DEPTHS[152],
            "groups": 64,
            "width_per_group": 4,
            "reduce_first": 2,
            "stem": "deep",
            "downsample_kernel": 3,
        },
    ),
):
    register(
        _name,
        partial(ResNet, attention="se", **_architecture),
        family="senet",
        structure="timm",
        preprocessing=_preprocessing,
    )

# He et al. 2016, Sec. 4.2: 6n+2 layers; Xie et al. 2017, Sec. 5.3: ResNeXt-29.
for _n, _depth in ((3, 20), (5, 32), (7, 44), (9, 56), (18, 110), (200, 1202)):
    _cifar_net = partial(
        ResNet, stem="cifar", block="basic", depths=(_n,) * 3, widths=(16, 32, 64), stem_width=16
    )
    _shortcuts = {"resnet": "A"} if _depth == 1202 else {"resnet": "A", "plain": "none"}
    for _prefix, _shortcut in _shortcuts.items():
        register(
            f"{_prefix}{_depth}",
            partial(_cifar_net, shortcut=_shortcut),
            family="cifar_resnet",
            structure="paper",
            preprocessing=CIFAR10,
            num_classes=10,
        )
for _cardinality in (8, 16):
    register(
        f"resnext29_{_cardinality}x64d",
        partial(
            ResNet,
            stem="cifar",
            depths=(3, 3, 3),
            widths=(64, 128, 256),
            groups=_cardinality,
            width_per_group=64,
        ),
        family="cifar_resnext",
        structure="paper",
        preprocessing=CIFAR10,
        num_classes=10,
    )

"""AlexNet (torchvision's and Krizhevsky et al. 2012's), AlexNet-BN and ZFNet (Zeiler & Fergus
2014), and the layout they share with VGG: a table of convolutions and max pools, adaptive
average pooling, then a three-layer MLP (`SequentialConvNet`, which `archs.vgg` reuses).

Models (`create_model` names):
  alexnet      torchvision's: 64-192-384-256-256, conv1 11x11/4 padding 2, dropout before fc1
               and fc2, PyTorch's default init; AdaptiveAvgPool2d(6), so any input from 63x63.
  alexnet_lrn  the paper's (Fig. 2), 227x227: 96-256-384-384-256, conv1 11x11/4 unpadded,
               conv2/4/5 in two groups (the two GPU towers), LRN (k=2, n=5, alpha=1e-4,
               beta=0.75) after the ReLUs of conv1 and conv2, dropout on the outputs of the two
               hidden fc layers (Sec. 4.2), init N(0, 0.01) with biases 1 in conv2, conv4, conv5
               and the hidden fc layers, 0 elsewhere (Sec. 5).
  alexnet_bn   alexnet_lrn without LRN and with BatchNorm after every conv, before its ReLU;
               the convs lose their biases, which BatchNorm's shift makes redundant.
  zfnet        Zeiler & Fergus Fig. 3, dense (no groups): 96@7x7/2, 256@5x5/2, 384-384-256,
               maps 110-55-26-13-13-13-6 from 224, LRN after conv1 and conv2, init N(0, 0.01)
               with zero biases (Sec. 3).
The paper nets keep the adaptive pooling to the paper's 6x6 map: the identity at their own
resolution, and it lets them run on other sizes.

`features(x)`: `stem` (after the first max pool), `stage1`, `stage2`, ... (after each later
pool, and after the last layer if no pool ends the table), `pre_logits` (the last fc's input).

Overrides, for every model: `lrn` (bool: LRN after the ReLUs of conv1 and conv2),
`batch_norm` (bool: BatchNorm after every conv; conv biases are then dropped, except in
VGG, which keeps torchvision's), `drop_rate` (float in [0, 1); 0 turns dropout off). So
alexnet_lrn, alexnet_bn and `create_model('alexnet_lrn', lrn=False)` are "AlexNet with LRN vs
BatchNorm vs neither". alexnet_lrn and alexnet_bn also take `groups` (2: the two towers; 1:
one dense network).

Module paths: `feature_layers` and `classifier` are nnx.Lists that mirror torchvision's
`features` and `classifier` nn.Sequentials index for index, the parameterless ReLU, LRN,
pooling and dropout layers holding their places. The one rename: `features` is the method of
the calling contract, so torch's `features.<i>` is our `feature_layers.<i>` (a converter
replaces the prefix): `feature_layers.3.kernel` is `features.3.weight`, a
BatchNorm at `feature_layers.1` is `features.1.{weight,bias,running_mean,running_var}`, and
`classifier.1.kernel` is `classifier.1.weight` unchanged. The flatten before the classifier
takes torch's (C, H, W) order, so converted fc weights compute the same function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.classifier import Classifier
from archs.convolution import LAX, ConvImpl
from archs.registry import register

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution of a layer table, followed by its ReLU; padding None is kernel // 2."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int | None = None
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class Pool:
    """One max pool of a layer table (PyTorch's floor mode); it ends a stage."""

    kernel_size: int
    stride: int
    padding: int = 0


LayerSpec = ConvLayer | Pool


def _zeros(fan_in: int) -> nnx.Initializer:
    del fan_in
    return nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class Init:
    """How a network starts: conv and fc kernels, biases as a function of fan-in, and the
    layers (`conv1`.. and `fc1`..`fc3`, counted from the input) whose biases start at 1."""

    conv_kernel: nnx.Initializer
    linear_kernel: nnx.Initializer
    bias: Callable[[int], nnx.Initializer] = _zeros
    ones: frozenset[str] = frozenset()

    def bias_for(self, layer: str, fan_in: int) -> nnx.Initializer:
        return nnx.initializers.ones_init() if layer in self.ones else self.bias(fan_in)


TORCH_DEFAULT_INIT = Init(
    layers.torch_default_init, layers.torch_default_init, layers.torch_default_bias_init
)
GAUSSIAN_INIT = Init(nnx.initializers.normal(0.01), nnx.initializers.normal(0.01))
"""N(0, 0.01) weights and zero biases: ZFNet's (Sec. 3), and AlexNet's apart from its ones."""


class SequentialConvNet(Classifier):
    """Convs and max pools from a layer table, AdaptiveAvgPool2d(pool_size), flatten in torch's
    (C, H, W) order, then fc-ReLU-fc-ReLU-fc with dropout before (torchvision's AlexNet) or
    after (the papers, VGG) each hidden ReLU block. Each pool ends a stage; so does the
    last layer."""

    def __init__(
        self,
        table: Sequence[LayerSpec],
        *,
        num_classes: int,
        pool_size: int,
        init: Init,
        hidden: int = 4096,
        drop_rate: float = 0.5,
        dropout_first: bool = False,
        lrn_after: Collection[int] = (),
        batch_norm: bool = False,
        conv_bias: bool = True,
        dtype: jnp.dtype = jnp.float32,
        conv: ConvImpl = LAX,
        rngs: nnx.Rngs,
    ):
        features: list = []
        stage_ends = []
        channels, convs = self.in_channels, 0
        for spec in table:
            if isinstance(spec, Pool):
                features.append(layers.MaxPool(spec.kernel_size, spec.stride, spec.padding))
                stage_ends.append(len(features) - 1)
                continue
            convs += 1
            fan_in = channels // spec.groups * spec.kernel_size**2
            features.append(
                layers.conv2d(
                    channels,
                    spec.out_channels,
                    spec.kernel_size,
                    stride=spec.stride,
                    padding=spec.padding,
                    groups=spec.groups,
                    bias=conv_bias,
                    kernel_init=init.conv_kernel,
                    bias_init=init.bias_for(f"conv{convs}", fan_in),
                    dtype=dtype,
                    conv_general_dilated=conv.outside_scan,
                    rngs=rngs,
                )
            )
            if batch_norm:
                features.append(layers.batch_norm(spec.out_channels, dtype=dtype, rngs=rngs))
            features.append(jax.nn.relu)
            if convs in lrn_after:
                features.append(layers.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
            channels = spec.out_channels
        self.feature_layers = nnx.List(features)
        self.stage_ends = (*stage_ends, len(features) - 1)
        self.pool_size = pool_size

        def fc(index: int, fan_in: int, fan_out: int) -> nnx.Linear:
            return layers.linear(
                fan_in,
                fan_out,
                kernel_init=init.linear_kernel,
                bias_init=init.bias_for(f"fc{index}", fan_in),
                dtype=dtype,
                rngs=rngs,
            )

        classifier: list = []
        width = channels * pool_size**2
        for index in (1, 2):
            block = [fc(index, width, hidden), jax.nn.relu]
            dropout = nnx.Dropout(drop_rate, rngs=rngs)
            classifier += [dropout, *block] if dropout_first else [*block, dropout]
            width = hidden
        classifier.append(fc(3, hidden, num_classes))
        self.classifier = nnx.List(classifier)

    def forward_features(self, x: Array) -> dict[str, Array]:
        feats: dict[str, Array] = {}
        for index, layer in enumerate(self.feature_layers):
            x = layer(x)
            if index in self.stage_ends:
                feats[f"stage{len(feats)}" if feats else "stem"] = x
        x = layers.adaptive_avg_pool(x, self.pool_size)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        for layer in self.classifier[:-1]:
            x = layer(x)
        feats["pre_logits"] = x
        return feats

    def head(self, pre_logits: Array) -> Array:
        return self.classifier[-1](pre_logits)


def check_flag(name: str, value: object) -> None:
    """Refuse an on/off override that is not a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_drop_rate(value: object) -> None:
    """Refuse a dropout rate outside [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"drop_rate must be a number in [0, 1), got {value!r}")


def _check_groups(value: object) -> None:
    if isinstance(value, bool) or value not in (1, 2):
        raise ValueError(f"groups must be 1 (one dense network) or 2 (two towers), got {value!r}")


# Krizhevsky et al. 2012, Fig. 2 / Sec. 3.5 (pools 3x3/2, overlapping) and Sec. 5 (init).
def _paper_table(groups: int) -> tuple[LayerSpec, ...]:
    return (
        ConvLayer(96, 11, stride=4, padding=0),
        Pool(3, 2),
        ConvLayer(256, 5, groups=groups),
        Pool(3, 2),
        ConvLayer(384, 3),
        ConvLayer(384, 3, groups=groups),
        ConvLayer(256, 3, groups=groups),
        Pool(3, 2),
    )


PAPER_INIT = dataclasses.replace(
    GAUSSIAN_INIT, ones=frozenset({"conv2", "conv4", "conv5", "fc1", "fc2"})
)

# torchvision.models.AlexNet.features.
TORCHVISION_TABLE: tuple[LayerSpec, ...] = (
    ConvLayer(64, 11, stride=4, padding=2),
    Pool(3, 2),
    ConvLayer(192, 5),
    Pool(3, 2),
    ConvLayer(384, 3),
    ConvLayer(256, 3),
    ConvLayer(256, 3),
    Pool(3, 2),
)

# Zeiler & Fergus 2014, Fig. 3, with the paddings that give its maps 110-55-26-13-13-13-6.
ZFNET_TABLE: tuple[LayerSpec, ...] = (
    ConvLayer(96, 7, stride=2, padding=1),
    Pool(3, 2, padding=1),
    ConvLayer(256, 5, stride=2, padding=0),
    Pool(3, 2, padding=1),
    ConvLayer(384, 3),
    ConvLayer(384, 3),
    ConvLayer(256, 3),
    Pool(3, 2),
)


def _alexnet_like(
    table: Sequence[LayerSpec],
    init: Init,
    *,
    num_classes: int,
    rngs: nnx.Rngs,
    dtype: jnp.dtype,
    conv: ConvImpl,
    lrn: bool,
    batch_norm: bool,
    drop_rate: float,
    dropout_first: bool = False,
) -> SequentialConvNet:
    check_flag("lrn", lrn)
    check_flag("batch_norm", batch_norm)
    check_drop_rate(drop_rate)
    return SequentialConvNet(
        table,
        num_classes=num_classes,
        pool_size=6,
        init=init,
        drop_rate=drop_rate,
        dropout_first=dropout_first,
        lrn_after=(1, 2) if lrn else (),
        batch_norm=batch_norm,
        conv_bias=not batch_norm,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


def alexnet(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    lrn: bool = False,
    batch_norm: bool = False,
    drop_rate: float = 0.5,
) -> SequentialConvNet:
    """torchvision's AlexNet."""
    return _alexnet_like(
        TORCHVISION_TABLE,
        TORCH_DEFAULT_INIT,
        num_classes=num_classes,
        rngs=rngs,
        dtype=dtype,
        conv=conv,
        lrn=lrn,
        batch_norm=batch_norm,
        drop_rate=drop_rate,
        dropout_first=True,
    )


def alexnet_paper(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    lrn: bool = True,
    batch_norm: bool = False,
    drop_rate: float = 0.5,
    groups: int = 2,
) -> SequentialConvNet:
    """Krizhevsky et al.'s AlexNet, the two towers as feature groups."""
    _check_groups(groups)
    return _alexnet_like(
        _paper_table(groups),
        PAPER_INIT,
        num_classes=num_classes,
        rngs=rngs,
        dtype=dtype,
        conv=conv,
        lrn=lrn,
        batch_norm=batch_norm,
        drop_rate=drop_rate,
    )


def zfnet(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    lrn: bool = True,
    batch_norm: bool = False,
    drop_rate: float = 0.5,
) -> SequentialConvNet:
    """Zeiler & Fergus's network."""
    return _alexnet_like(
        ZFNET_TABLE,
        GAUSSIAN_INIT,
        num_classes=num_classes,
        rngs=rngs,
        dtype=dtype,
        conv=conv,
        lrn=lrn,
        batch_norm=batch_norm,
        drop_rate=drop_rate,
    )


register("alexnet", alexnet, family="alexnet")
register(
    "alexnet_lrn",
    alexnet_paper,
    family="alexnet",
    image_size=227,
    crop_pct=227 / 256,
    structure="paper",
)
register(
    "alexnet_bn",
    partial(alexnet_paper, lrn=False, batch_norm=True),
    family="alexnet",
    image_size=227,
    crop_pct=227 / 256,
    structure="paper",
)
register("zfnet", zfnet, family="alexnet", structure="paper")

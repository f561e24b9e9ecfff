"""AlexNet (torchvision's and Krizhevsky et al. 2012's), AlexNet-BN and ZFNet (Zeiler & Fergus
2014), as layer tables of `archs.sequential_net.SequentialConvNet` (the layout VGG shares).

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
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.checks import check, check_flag, check_rate
from archs.convolution import LAX, ConvImpl
from archs.registry import Preprocessing, register
from archs.sequential_net import ConvLayer, Init, LayerSpec, Pool, SequentialConvNet

TORCH_DEFAULT_INIT = Init(
    layers.torch_default_init, layers.torch_default_init, layers.torch_default_bias_init
)
GAUSSIAN_INIT = Init(nnx.initializers.normal(0.01), nnx.initializers.normal(0.01))
"""N(0, 0.01) weights and zero biases: ZFNet's (Sec. 3), and AlexNet's apart from its ones."""


def _check_groups(value: object) -> None:
    ok = value in (1, 2) and not isinstance(value, bool)
    check("groups", value, "1 (one dense network) or 2 (two towers)", ok)


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
    check_rate("drop_rate", drop_rate)
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


def alexnet_lrn(
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
    """Krizhevsky et al.'s AlexNet, the two towers as feature groups, with its LRN."""
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


def alexnet_bn(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    lrn: bool = False,
    batch_norm: bool = True,
    drop_rate: float = 0.5,
    groups: int = 2,
) -> SequentialConvNet:
    """`alexnet_lrn` with BatchNorm after every conv in place of LRN (its defaults)."""
    return alexnet_lrn(
        num_classes=num_classes,
        rngs=rngs,
        dtype=dtype,
        conv=conv,
        lrn=lrn,
        batch_norm=batch_norm,
        drop_rate=drop_rate,
        groups=groups,
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


# Krizhevsky et al. 2012: 227x227 crops (the size Fig. 2's layer sizes need) of images
# down-sampled to 256 (Sec. 2).
PAPER_INPUT = Preprocessing(image_size=227, crop_pct=227 / 256)

register("alexnet", alexnet, family="alexnet")
register("alexnet_lrn", alexnet_lrn, family="alexnet", structure="paper", preprocessing=PAPER_INPUT)
register("alexnet_bn", alexnet_bn, family="alexnet", structure="paper", preprocessing=PAPER_INPUT)
register("zfnet", zfnet, family="alexnet", structure="paper")

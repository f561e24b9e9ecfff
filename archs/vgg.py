"""VGG (Simonyan & Zisserman 2015): configurations A-E of Table 1 as one builder from a config
list, on the layout AlexNet shares (`archs.sequential_net.SequentialConvNet`).

A config is a sequence of entries: an int is a 3x3 conv of that width (padding 1), a pair
`(width, kernel)` a conv with another kernel (padding kernel // 2), 'M' a 2x2/2 max pool;
`CONFIGS` holds the paper's A-E by letter. Every conv is followed by a ReLU (and, with
`batch_norm`, preceded by a BatchNorm: conv-BN-ReLU, conv biases kept as torchvision's).
Then AdaptiveAvgPool2d(7), and fc 4096-ReLU-dropout-4096-ReLU-dropout-num_classes.

Models: torchvision's `vgg11` (A), `vgg13` (B), `vgg16` (D), `vgg19` (E) and their `_bn`
variants, with torchvision's init (convs He normal fan-out, fc N(0, 0.01), zero biases);
the paper's `vgg11_lrn` (A-LRN: LRN after the first conv's ReLU, with AlexNet's constants)
and `vgg16_c` (C: a 1x1 conv ends stages 3-5), same classifier and init.

Overrides: `config` (a letter A-E or a config list), `batch_norm` (bool), `lrn` (bool),
`drop_rate` (float in [0, 1); 0 turns dropout off). The paper's ablations are overrides:
A vs A-LRN is `lrn`; "a stack of 3x3 convs vs one larger kernel" (Sec. 4.2: B with each pair
of 3x3 convs replaced by one 5x5) is
    create_model('vgg13', config=[(64, 5), 'M', (128, 5), 'M', (256, 5), 'M', (512, 5), 'M',
                                  (512, 5), 'M'])

Module paths mirror torchvision's nn.Sequential indices (see `archs.sequential_net`): our
`feature_layers.<i>` is torch's `features.<i>` (its convs and BatchNorms), and
`classifier.{0,3,6}` are its Linears under the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.checks import check_flag, check_rate, is_positive_int
from archs.convolution import LAX, ConvImpl
from archs.registry import register
from archs.sequential_net import ConvLayer, Init, LayerSpec, Pool, SequentialConvNet

ConfigEntry = int | str | tuple[int, int]

CONFIGS: dict[str, tuple[ConfigEntry, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "C": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"),
    ),
    "D": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    ),
    "E": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}

TORCHVISION_INIT = Init(layers.he_normal_fan_out, nnx.initializers.normal(0.01))


def _bad_config(config: object, why: str) -> ValueError:
    return ValueError(
        f"config must be one of {', '.join(map(repr, CONFIGS))} or a list of conv widths (int),"
        f" (width, kernel) pairs with an odd kernel, and 'M'; got {config!r}: {why}"
    )


def _layer(entry: object, config: object) -> LayerSpec:
    if entry == "M":
        return Pool(2, 2)
    if is_positive_int(entry):
        return ConvLayer(entry, 3)
    if (
        isinstance(entry, tuple | list)
        and len(entry) == 2
        and all(map(is_positive_int, entry))
        and entry[1] % 2 == 1
    ):
        return ConvLayer(entry[0], entry[1])
    raise _bad_config(config, f"bad entry {entry!r}")


def config_table(config: str | Sequence[ConfigEntry]) -> tuple[LayerSpec, ...]:
    """The layer table of a config letter or list; a ValueError names a bad one."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise _bad_config(config, "unknown letter")
        config = CONFIGS[config]
    if not isinstance(config, Sequence):
        raise _bad_config(config, "not a list")
    table = tuple(_layer(entry, config) for entry in config)
    if not any(isinstance(spec, ConvLayer) for spec in table):
        raise _bad_config(config, "no conv")
    return table


def vgg(
    *,
    num_classes: int = 1000,
    rngs: nnx.Rngs,
    dtype: jnp.dtype = jnp.float32,
    conv: ConvImpl = LAX,
    config: str | Sequence[ConfigEntry] = "D",
    batch_norm: bool = False,
    lrn: bool = False,
    drop_rate: float = 0.5,
) -> SequentialConvNet:
    """A VGG network from a config letter or list."""
    table = config_table(config)
    check_flag("batch_norm", batch_norm)
    check_flag("lrn", lrn)
    check_rate("drop_rate", drop_rate)
    return SequentialConvNet(
        table,
        num_classes=num_classes,
        pool_size=7,
        init=TORCHVISION_INIT,
        drop_rate=drop_rate,
        lrn_after=(1,) if lrn else (),
        batch_norm=batch_norm,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
    )


for _name, _config in (("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    register(_name, partial(vgg, config=_config), family="vgg")
    register(f"{_name}_bn", partial(vgg, config=_config, batch_norm=True), family="vgg")
register("vgg11_lrn", partial(vgg, config="A", lrn=True), family="vgg", structure="paper")
register("vgg16_c", partial(vgg, config="C"), family="vgg", structure="paper")

"""The plain conv-net layout AlexNet, ZFNet and VGG share: `SequentialConvNet`.

A table of convolutions (`ConvLayer`, each followed by its ReLU, optionally by BatchNorm
before it and LRN after it) and max pools (`Pool`, each ending a stage), PyTorch's
AdaptiveAvgPool2d, a flatten in torch's (C, H, W) order, then a three-layer MLP with dropout.
`Init` says how the weights start. The layers live in two nnx.Lists, `feature_layers` and
`classifier`, that mirror torchvision's `features` and `classifier` nn.Sequentials index for
index (the parameterless ReLU, LRN, pooling and dropout layers hold their places), so a torch
key is our path with `features` for `feature_layers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from archs import layers
from archs.classifier import Classifier
from archs.convolution import LAX, ConvImpl

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

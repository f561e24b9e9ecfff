"""Which convolution function a model's layers call: chosen when the model is built.

`archs.create_model(name, conv=...)` takes a `ConvImpl`, as flax's examples take a `conv`
module definition: `outside_scan` is called by every convolution that runs once per forward
pass, `inside_scan` by those inside an `nnx.scan` loop (ResNet's `scan_blocks`). Both have
`lax.conv_general_dilated`'s signature (what `nnx.Conv` calls) and compute the same function;
they may differ only in how they are differentiated or lowered. The default, `LAX`, is
`lax.conv_general_dilated` everywhere; `archs.fast_conv.for_backend` gives the CPU's faster
backward passes. The choice is static (part of the graph definition, never of the state), so
it changes neither parameters nor checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from jax import lax

ConvFunction = Callable[..., jax.Array]
"""A function with `lax.conv_general_dilated`'s signature."""


@dataclasses.dataclass(frozen=True)
class ConvImpl:
    """The convolution functions of a model: outside and inside scanned loops."""

    outside_scan: ConvFunction = lax.conv_general_dilated
    inside_scan: ConvFunction = lax.conv_general_dilated


LAX = ConvImpl()
"""`lax.conv_general_dilated` everywhere: every model's default."""

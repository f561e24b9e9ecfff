"""Convolutions with `lax.conv_general_dilated`'s signature whose backward pass XLA:CPU runs fast.

JAX differentiates a convolution into convolutions with permuted dimension labels (the kernel's
in/out swapped for the input gradient; batch and features swapped for the kernel gradient).
XLA:CPU runs those far slower than the forward convolution, and inside a while loop (an
`nnx.scan`) it leaves them on a generic loop emitter altogether (jax-ml/jax#12868). Two
replacements, each a `jax.custom_vjp` that computes the same numbers as lax's gradients:

- pointwise: the gradients of a 1x1 convolution without padding or groups (any stride) are
  matmuls over the pixels; written as `einsum`s they run as XLA:CPU's matmuls. The forward
  pass stays lax's, so outputs are unchanged to the bit.
- loop-safe: a stride-1, undilated NHWC/HWIO convolution with explicit padding, differentiated
  with explicit transposes around canonical convolutions, which XLA:CPU runs as fast in a loop
  as outside (outside a loop lax's own backward is slightly faster, so only scanned
  convolutions use it, 1x1 ones included: that compiles faster than matmuls in the loop).

`conv_general_dilated` takes the pointwise path where it applies, `scan_conv_general_dilated`
the loop-safe one; any other convolution is lax's, unchanged. Models use them only when built
with `for_backend("cpu")` (`archs.create_model(name, conv=...)`): accelerators run lax's
convolutions through their own libraries, so every other backend gets `archs.convolution.LAX`.
`docs/benchmarks.md` has the measured speed-ups.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from archs.convolution import LAX, ConvImpl

NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], ...]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pointwise(x: jax.Array, w: jax.Array, strides: tuple, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, strides, ((0, 0), (0, 0)), dimension_numbers=NHWC, precision=precision
    )


def _pointwise_fwd(x, w, strides, precision):
    return _pointwise(x, w, strides, precision), (x, w)


def _pointwise_bwd(strides, precision, residuals, dy):
    x, w = residuals
    sampled = x[:, :: strides[0], :: strides[1]]
    dw = jnp.einsum("bhwc,bhwd->cd", sampled, dy, precision=precision)
    dx = jnp.einsum("bhwd,cd->bhwc", dy, w[0, 0], precision=precision)
    # Back to the input's grid: each stride-th pixel, zeros between and after.
    grid = (
        [(0, 0, 0)]
        + [
            (0, size - 1 - (n - 1) * s, s - 1)
            for size, n, s in zip(x.shape[1:3], dx.shape[1:3], strides, strict=True)
        ]
        + [(0, 0, 0)]
    )
    return lax.pad(dx, jnp.zeros((), dx.dtype), grid), dw[None, None]


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loop_safe(
    x: jax.Array, w: jax.Array, padding: Padding, groups: int, precision: Any
) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        padding,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        precision=precision,
    )


def _loop_safe_fwd(x, w, padding, groups, precision):
    return _loop_safe(x, w, padding, groups, precision), (x, w)


def _loop_safe_bwd(padding, groups, precision, residuals, dy):
    x, w = residuals
    kh, kw, in_per_group, out_channels = w.shape
    out_per_group = out_channels // groups
    # Input gradient: dy correlated with the spatially flipped kernel, in/out swapped per group.
    flipped = w[::-1, ::-1].reshape(kh, kw, in_per_group, groups, out_per_group)
    flipped = flipped.transpose(0, 1, 4, 3, 2).reshape(kh, kw, out_per_group, groups * in_per_group)
    full = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding, strict=True))
    dx = lax.conv_general_dilated(
        dy,
        flipped,
        (1, 1),
        full,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        precision=precision,
    )
    # Kernel gradient: x with batch and channels swapped, correlated with dy as the kernel.
    dw = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),
        dy.transpose(1, 2, 0, 3),
        (1, 1),
        padding,
        dimension_numbers=NHWC,
        batch_group_count=groups,
        precision=precision,
    )
    return dx, dw.transpose(1, 2, 0, 3)


_loop_safe.defvjp(_loop_safe_fwd, _loop_safe_bwd)


def _canonical(
    lhs: jax.Array,
    rhs: jax.Array,
    padding: Any,
    dilations: Sequence[Sequence[int] | None],
    dimension_numbers: Any,
    kwargs: dict[str, Any],
) -> bool:
    """An undilated NHWC/HWIO convolution of same-dtype operands with explicit padding and no
    extra lax options: what both replacements require."""
    return (
        lhs.ndim == 4
        and lhs.dtype == rhs.dtype
        and not isinstance(padding, str)
        and all(d == 1 for dilation in dilations for d in (dilation or ()))
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        and all(v is None for v in kwargs.values())
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    *,
    in_loop: bool = False,
    **kwargs: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` (what `nnx.Conv` calls), with the pointwise backward pass
    where it applies or, `in_loop`, the loop-safe one."""

    def lax_conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )

    dilations = (lhs_dilation, rhs_dilation)
    if not _canonical(lhs, rhs, padding, dilations, dimension_numbers, kwargs):
        return lax_conv(lhs, rhs)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(window_strides)

    if in_loop:
        if strides != (1, 1):
            return lax_conv(lhs, rhs)
        return _loop_safe(lhs, rhs, pads, feature_group_count, precision)
    if rhs.shape[:2] != (1, 1) or feature_group_count != 1 or any(p != (0, 0) for p in pads):
        return lax_conv(lhs, rhs)
    return _pointwise(lhs, rhs, strides, precision)


def scan_conv_general_dilated(*args: Any, **kwargs: Any) -> jax.Array:
    """`conv_general_dilated(..., in_loop=True)`: for a convolution inside a loop."""
    return conv_general_dilated(*args, in_loop=True, **kwargs)


CPU = ConvImpl(outside_scan=conv_general_dilated, inside_scan=scan_conv_general_dilated)
"""The fast CPU backward passes: pointwise outside loops, loop-safe inside them."""


def for_backend(backend: str) -> ConvImpl:
    """The convolutions to build a model with for `backend` (`jax.default_backend()`): `CPU` on
    'cpu', lax's elsewhere."""
    return CPU if backend == "cpu" else LAX

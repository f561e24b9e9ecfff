"""archs.fast_conv: the same convolution and gradients as lax's; on the CPU, 1x1 convolutions
differentiate as matmuls, and scanned convolutions' gradients compile to canonical (fast)
convolutions."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from archs import fast_conv

DN = ("NHWC", "HWIO", "NHWC")
CONVS = {
    "conv_general_dilated": fast_conv.conv_general_dilated,
    "scan_conv_general_dilated": fast_conv.scan_conv_general_dilated,
}


def _inputs(kernel: int, groups: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(kernel * 10 + groups)
    x = rng.standard_normal((2, 7, 9, 8))
    w = rng.standard_normal((kernel, kernel, 8 // groups, 12))
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def _conv_kwargs(stride: int, padding, groups: int = 1) -> dict:
    return {
        "window_strides": (stride, stride),
        "padding": padding,
        "dimension_numbers": DN,
        "feature_group_count": groups,
    }


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize(
    "kernel, stride, groups, padding",
    [
        (3, 1, 1, ((1, 1), (1, 1))),
        (1, 1, 1, ((0, 0), (0, 0))),
        (1, 2, 1, ((0, 0), (0, 0))),
        (3, 1, 4, ((0, 2), (2, 1))),
        (3, 2, 1, ((1, 1), (1, 1))),
        (3, 2, 1, ((0, 1), (1, 0))),
        (5, 3, 1, ((2, 2), (2, 2))),
        (7, 2, 1, ((3, 3), (3, 3))),
        (3, 2, 4, ((1, 1), (1, 1))),
    ],
)
@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_values_and_gradients_equal_lax(conv, kernel, stride, groups, padding, dtype, rtol):
    x, w = _inputs(kernel, groups, dtype)
    kwargs = _conv_kwargs(stride, padding, groups)
    out_shape = lax.conv_general_dilated(x, w, **kwargs).shape
    dy = jnp.asarray(np.random.default_rng(0).standard_normal(out_shape), dtype)

    def run(conv_fn):
        out, vjp = jax.vjp(lambda x, w: conv_fn(x, w, **kwargs), x, w)
        return (out, *vjp(dy))

    pairs = zip(run(CONVS[conv]), run(lax.conv_general_dilated), strict=True)
    for name, (ours, ref) in zip(("y", "dx", "dw"), pairs, strict=True):
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, name
        scale = float(jnp.abs(ref.astype(jnp.float32)).max())
        diff = float(jnp.abs(ours.astype(jnp.float32) - ref.astype(jnp.float32)).max())
        assert diff <= rtol * scale, (name, diff, scale)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_gradients_are_matmuls_on_cpu(stride):
    """On the CPU a 1x1 convolution and its gradients lower to dot_general, not convolution."""
    x, w = _inputs(1, 1)
    kwargs = _conv_kwargs(stride, ((0, 0), (0, 0)))

    def lowered(conv_fn) -> str:
        grad = jax.jit(jax.grad(lambda x, w: conv_fn(x, w, **kwargs).sum(), (0, 1)))
        return grad.lower(x, w).as_text()

    assert "stablehlo.convolution" in lowered(lax.conv_general_dilated)
    ours = lowered(fast_conv.conv_general_dilated)
    assert "stablehlo.convolution" not in ours
    assert ours.count("stablehlo.dot_general") == 2


def test_which_convolutions_take_which_path():
    """Outside loops only 1x1 convolutions leave lax (for the pointwise path, on the CPU); in
    scans every stride-1 one takes the loop-safe path. Strided 3x3, grouped, dilated or
    SAME-padded ones stay lax's."""

    def jaxpr(conv_fn, kernel=3, groups=1, **kwargs):
        inputs = _inputs(kernel, groups)
        return str(jax.make_jaxpr(lambda x, w: conv_fn(x, w, **kwargs))(*inputs))

    same = _conv_kwargs(1, ((1, 1), (1, 1)))
    pointwise = {**same, "padding": ((0, 0), (0, 0))}
    strided = {**same, "window_strides": (2, 2)}
    assert "custom_vjp" not in jaxpr(fast_conv.conv_general_dilated, **same)
    assert "platform_index" in jaxpr(fast_conv.conv_general_dilated, 1, **pointwise)
    for kernel, kwargs in ((3, same), (1, pointwise)):
        scanned = jaxpr(fast_conv.scan_conv_general_dilated, kernel, **kwargs)
        assert "custom_vjp" in scanned and "platform_index" not in scanned
    grouped = {**strided, "feature_group_count": 4}
    dilated = {**same, "padding": "SAME", "rhs_dilation": (2, 2)}
    for conv_fn in CONVS.values():
        assert "custom_vjp" not in jaxpr(conv_fn, **strided)
        assert "custom_vjp" not in jaxpr(conv_fn, 3, 4, **grouped)
        assert "custom_vjp" not in jaxpr(conv_fn, **dilated)


def test_backward_inside_a_scan_compiles_to_canonical_convolutions():
    """XLA:CPU runs only canonical (b01f_01io->b01f) convolutions fast; lax's own backward pass
    inside a while loop keeps permuted labels (jax-ml/jax#12868)."""
    x = jnp.ones((2, 6, 6, 8))
    stacked = jnp.ones((3, 3, 3, 8, 8)) * 0.1

    def loss(stacked, x):
        def body(h, w):
            conv = fast_conv.scan_conv_general_dilated(h, w, **_conv_kwargs(1, ((1, 1), (1, 1))))
            return jax.nn.relu(conv), None

        return lax.scan(body, x, stacked)[0].sum()

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(stacked, x).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
    assert len(labels) >= 3, hlo  # forward, input and kernel gradient
    assert set(labels) == {"b01f_01io->b01f"}, labels

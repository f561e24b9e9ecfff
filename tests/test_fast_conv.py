"""archs.fast_conv: the same convolution and gradients as lax's; 1x1 convolutions differentiate
as matmuls, and scanned convolutions' gradients compile to canonical (fast) convolutions. Models
take them through `create_model(name, conv=...)` (archs.convolution), lax's by default."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import archs
from archs import fast_conv, summary
from archs.convolution import LAX, ConvImpl

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
def test_pointwise_gradients_are_matmuls(stride):
    """The gradients of a 1x1 convolution lower to dot_general, not convolution."""
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
    """Outside loops only 1x1 convolutions leave lax (for the pointwise path); in scans every
    stride-1 one takes the loop-safe path. Strided 3x3, grouped, dilated or SAME-padded ones
    stay lax's."""

    def jaxpr(conv_fn, kernel=3, groups=1, **kwargs):
        inputs = _inputs(kernel, groups)
        return str(jax.make_jaxpr(lambda x, w: conv_fn(x, w, **kwargs))(*inputs))

    same = _conv_kwargs(1, ((1, 1), (1, 1)))
    pointwise = {**same, "padding": ((0, 0), (0, 0))}
    strided = {**same, "window_strides": (2, 2)}
    assert "custom_vjp" not in jaxpr(fast_conv.conv_general_dilated, **same)
    assert "custom_vjp" in jaxpr(fast_conv.conv_general_dilated, 1, **pointwise)
    for kernel, kwargs in ((3, same), (1, pointwise)):
        assert "custom_vjp" in jaxpr(fast_conv.scan_conv_general_dilated, kernel, **kwargs)
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


# ----- injection into models ---------------------------------------------------------------


def test_for_backend_gives_the_fast_cpu_convolutions_on_cpu_only():
    assert fast_conv.for_backend("cpu") == ConvImpl(
        fast_conv.conv_general_dilated, fast_conv.scan_conv_general_dilated
    )
    for backend in ("gpu", "tpu"):
        assert fast_conv.for_backend(backend) == LAX == ConvImpl()
    assert LAX.outside_scan is LAX.inside_scan is lax.conv_general_dilated


def _conv_functions(model: nnx.Module) -> dict[str, object]:
    """Each nnx.Conv's path -> the function it calls."""
    return {
        ".".join(map(str, path)): module.conv_general_dilated
        for path, module in nnx.iter_graph(model)
        if isinstance(module, nnx.Conv)
    }


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("alexnet_lrn", {}),
        ("vgg11_bn", {}),
        ("googlenet", {}),
        ("inception_resnet_v2", {}),
        ("densenet121", {"block_config": (1, 1)}),
        ("senet154", {"depths": (1, 1, 1, 1)}),
    ],
)
def test_every_convolution_of_every_family_calls_the_injected_function(name, overrides):
    functions = _conv_functions(summary.abstract_model(name, **overrides))
    assert set(functions.values()) == {lax.conv_general_dilated}
    functions = _conv_functions(summary.abstract_model(name, conv=fast_conv.CPU, **overrides))
    assert set(functions.values()) == {fast_conv.conv_general_dilated}


def test_scanned_blocks_call_the_inside_scan_function():
    model = summary.abstract_model(
        "resnet50", conv=fast_conv.CPU, scan_blocks=True, depths=(1, 2, 1, 3)
    )
    for path, function in _conv_functions(model).items():
        stacked = path.startswith("layer") and path.split(".")[1] == "1"  # the stacked blocks
        expected = (
            fast_conv.scan_conv_general_dilated if stacked else fast_conv.conv_general_dilated
        )
        assert function is expected, path


def test_conv_is_not_an_override_and_is_checked():
    assert "conv" not in archs.model_overrides("resnet50")
    with pytest.raises(
        ValueError, match=r"conv must be an archs\.convolution\.ConvImpl, got 'cpu'"
    ):
        archs.create_model("resnet20", conv="cpu")


def test_cpu_convolutions_count_the_same_macs():
    """archs.summary needs no special case: custom_vjp calls hold their convolution."""
    cpu = summary.abstract_model("resnet50", conv=fast_conv.CPU, scan_blocks=True)
    assert summary.count_macs(cpu, 224) == summary.count_macs(
        summary.abstract_model("resnet50"), 224
    )


@pytest.mark.slow
def test_cpu_convolutions_compute_the_same_model():
    """A scanned CIFAR ResNet with 1x1 projections (shortcut C, so inside the scan too): the same
    logits, and the same gradients to float32 rounding, with either convolutions."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)

    def logits_and_grads(model: nnx.Module) -> tuple[jax.Array, list[jax.Array]]:
        logits, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)
        return logits, jax.tree.leaves(nnx.state(grads, nnx.Param))

    results = []
    for conv in (LAX, fast_conv.CPU):
        model = archs.create_model(
            "resnet20",
            rngs=nnx.Rngs(jax.random.key(0, impl="unsafe_rbg")),
            conv=conv,
            depths=(1, 2, 2),
            shortcut="C",
            scan_blocks=True,
        )
        results.append(nnx.jit(logits_and_grads)(model))
    (logits, grads), (cpu_logits, cpu_grads) = results
    np.testing.assert_array_equal(cpu_logits, logits)
    for ours, ref in zip(cpu_grads, grads, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)

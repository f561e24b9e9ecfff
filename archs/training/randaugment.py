"""RandAugment (Cubuk et al. 2020): the table of ops and magnitudes, and its JAX implementation.

`randaugment='N,M'` applies N ops per image, each drawn uniformly (with replacement) from the
table below at magnitude M in [0, 10], as timm's `rand_augment_transform('rand-mM-nN')` does
(`timm/data/auto_augment.py`, whose ops and mappings follow the TensorFlow TPU EfficientNet
implementation): its op list `_RAND_TRANSFORMS`, its magnitude-to-argument mappings, each drawn
op applied with probability 1/2, signed arguments negated with probability 1/2, and fill
(128, 128, 128) where geometric ops uncover the image. The paper (Cubuk et al. 2020, Sec. 3)
lists 14 ops with Identity and without Invert and SolarizeAdd, and applies every drawn op; in
timm the probability 1/2 plays Identity's part. Departures from timm: bilinear resampling only
(timm draws bilinear or bicubic), and every op rounds its float32 result to integers in
[0, 255] where PIL truncates in places.

One table serves two implementations, which agree op by op with each other and with the PIL
calls timm makes (tests/test_randaugment.py): this module's, in JAX (dm-pix's solarize and
grayscale; its affine_transform as the tests' reference for the resampling), run on device by
the train step for the `memory` pipeline; and `randaugment_tf`,
TensorFlow ops inside the `stream` pipeline's tf.data map. Both are pure functions of the image
and a key (a JAX key / a stateless TF seed) derived from (seed, step, example), so resumed runs
see the same images.

Geometric ops are written once, as the inverse map both implementations resample with: output
pixel (x, y) (column, row; pixel centres at integers) reads input point
(a0 x + a1 y + a2, b0 x + b1 y + b2), bilinearly; points outside [0, W-1] x [0, H-1] read the
fill. Rotation is about the image centre, counter-clockwise for positive angles, and shears are
about the top-left corner, as PIL's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp

from archs.training.config import parse_randaugment

Array = jax.Array

FILL = 128.0  # timm's _FILL, on every channel
OP_PROBABILITY = 0.5  # timm's rand_augment_ops(prob=0.5)
MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM
SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL's ImageFilter.SMOOTH, / 13
SOLARIZE_ADD_THRESHOLD = 128.0


@dataclasses.dataclass(frozen=True)
class Op:
    """One op and its argument: linear in M from `at_zero` (M = 0) to `at_max` (M = 10)."""

    name: str
    at_max: float = 0.0
    at_zero: float = 0.0
    signed: bool = False  # the argument is negated with probability 1/2
    integer: bool = False  # the argument is truncated to an integer

    def argument(self, magnitude: float) -> float:
        value = self.at_zero + (self.at_max - self.at_zero) * magnitude / MAX_MAGNITUDE
        return float(int(value)) if self.integer else value


# timm's _RAND_TRANSFORMS with its LEVEL_TO_ARG mappings (arguments in PIL's units: degrees,
# bits kept, thresholds and offsets in pixel values, enhance factors, shear slopes, and
# translations as fractions of the image size).
OPS = (
    Op("AutoContrast"),
    Op("Equalize"),
    Op("Invert"),
    Op("Rotate", at_max=30.0, signed=True),
    Op("Posterize", at_max=4.0, integer=True),
    Op("Solarize", at_max=256.0, integer=True),
    Op("SolarizeAdd", at_max=110.0, integer=True),
    Op("Color", at_max=1.9, at_zero=0.1),
    Op("Contrast", at_max=1.9, at_zero=0.1),
    Op("Brightness", at_max=1.9, at_zero=0.1),
    Op("Sharpness", at_max=1.9, at_zero=0.1),
    Op("ShearX", at_max=0.3, signed=True),
    Op("ShearY", at_max=0.3, signed=True),
    Op("TranslateXRel", at_max=0.45, signed=True),
    Op("TranslateYRel", at_max=0.45, signed=True),
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def inverse_affine(
    name: str, arg: Any, height: Any, width: Any, cos: Callable, sin: Callable
) -> tuple[Any, ...]:
    """(a0, a1, a2, b0, b1, b2) of a geometric op, from arithmetic on `arg` (a TF or JAX
    scalar) and the framework's `cos`/`sin`, so both implementations share it."""
    if name == "ShearX":
        return 1.0, arg, 0.5 * arg, 0.0, 1.0, 0.0
    if name == "ShearY":
        return 1.0, 0.0, 0.0, arg, 1.0, 0.5 * arg
    if name == "TranslateXRel":
        return 1.0, 0.0, arg * width, 0.0, 1.0, 0.0
    if name == "TranslateYRel":
        return 1.0, 0.0, 0.0, 0.0, 1.0, arg * height
    if name == "Rotate":
        theta = arg * (math.pi / 180.0)
        c, s = cos(theta), sin(theta)
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        return c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy
    raise ValueError(f"{name!r} is not a geometric op")


def smooth_interior(x: Any) -> Any:
    """PIL's SMOOTH filter on the (H-2, W-2) interior of an (H, W, C) TF or JAX image, as
    shifted slices (XLA's CPU depthwise convolution is far slower)."""

    def shifted(i: int, j: int) -> Any:
        return x[i : (i - 2) or None, j : (j - 2) or None]

    return sum(SMOOTH[i][j] * shifted(i, j) for i in range(3) for j in range(3)) / 13.0


# ----- JAX: float32 (H, W, 3) images holding integers in [0, 255] ----------------------------


def _pixels(x: Array) -> Array:
    return jnp.round(jnp.clip(x, 0.0, 255.0))


def _blend(degenerate: Array, x: Array, factor: Array) -> Array:
    return degenerate + factor * (x - degenerate)


def _grayscale(x: Array) -> Array:
    return jnp.round(dm_pix.rgb_to_grayscale(x, keep_dims=True))


def _auto_contrast(x: Array, _: Array) -> Array:
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    scale = 255.0 / jnp.maximum(hi - lo, 1.0)
    return jnp.where(hi > lo, (x - lo) * scale, x)


def _equalize_channel(c: Array) -> Array:
    """PIL's ImageOps.equalize of one channel."""
    values = c.astype(jnp.int32)
    hist = jnp.bincount(values.ravel(), length=256)
    step = (jnp.sum(hist) - hist[jnp.max(values)]) // 255
    before = jnp.cumsum(hist) - hist
    lut = jnp.minimum((before + step // 2) // jnp.maximum(step, 1), 255)
    return jnp.where(step > 0, lut[values].astype(c.dtype), c)


def _equalize(x: Array, _: Array) -> Array:
    return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(x)


def _posterize(x: Array, bits: Array) -> Array:
    step = 2.0 ** (8.0 - bits)
    return jnp.floor(x / step) * step


def _solarize(x: Array, threshold: Array) -> Array:
    return dm_pix.solarize(x / 255.0, threshold / 255.0) * 255.0


def _solarize_add(x: Array, add: Array) -> Array:
    return jnp.where(x < SOLARIZE_ADD_THRESHOLD, jnp.minimum(x + add, 255.0), x)


def _contrast(x: Array, factor: Array) -> Array:
    return _blend(jnp.floor(jnp.mean(_grayscale(x)) + 0.5), x, factor)


def _sharpness(x: Array, factor: Array) -> Array:
    degenerate = x.at[1:-1, 1:-1].set(jnp.round(smooth_interior(x)))  # PIL keeps the border
    return _blend(degenerate, x, factor)


def _coefficients(name: str, arg: Array, height: int, width: int) -> Array:
    values = inverse_affine(name, arg, height, width, jnp.cos, jnp.sin)
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def _affine(x: Array, coefficients: Array) -> Array:
    """Resample by an inverse map (a0, a1, a2, b0, b1, b2) over (column, row), bilinearly;
    points outside [0, W-1] x [0, H-1] read the fill. This is `dm_pix.affine_transform(...,
    order=1, mode='constant')` (the tests check it), written in 2-D: dm-pix interpolates over the
    channel axis too, and with a different map per image (vmap) it ran ~100x slower on CPU."""
    a0, a1, a2, b0, b1, b2 = coefficients
    h, w, channels = x.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    src_x, src_y = a0 * cols + a1 * rows + a2, b0 * cols + b1 * rows + b2
    inside = (src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)
    x0, y0 = jnp.clip(jnp.floor(src_x), 0, w - 1), jnp.clip(jnp.floor(src_y), 0, h - 1)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    flat = x.reshape(h * w, channels)

    def pixel(y: Array, x: Array) -> Array:
        return flat[(y * w + x).astype(jnp.int32)]

    top = pixel(y0, x0) * (1 - fx) + pixel(y0, x1) * fx
    bottom = pixel(y1, x0) * (1 - fx) + pixel(y1, x1) * fx
    return jnp.where(inside[..., None], top * (1 - fy) + bottom * fy, FILL)


def _geometric(name: str) -> Callable[[Array, Array], Array]:
    return lambda x, arg: _affine(x, _coefficients(name, arg, x.shape[0], x.shape[1]))


JAX_OPS: dict[str, Callable[[Array, Array], Array]] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": lambda x, _: 255.0 - x,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": lambda x, f: _blend(_grayscale(x), x, f),
    "Contrast": _contrast,
    "Brightness": lambda x, f: x * f,
    "Sharpness": _sharpness,
    **{name: _geometric(name) for name in GEOMETRIC},
}


def apply_op(name: str, image: Array, arg: Array | float) -> Array:
    """One op on a float32 (H, W, 3) image of integers in [0, 255]; the result is rounded."""
    return _pixels(JAX_OPS[name](image, jnp.asarray(arg, jnp.float32)))


def randaugment(image: Array, key: Array, num_ops: int, magnitude: float) -> Array:
    """RandAugment of one uint8 (H, W, 3) image, keyed by `key`; uint8 out."""
    op_key, apply_key, sign_key = jax.random.split(key, 3)
    chosen = jax.random.randint(op_key, (num_ops,), 0, len(OPS))
    applied = jax.random.uniform(apply_key, (num_ops,)) < OP_PROBABILITY
    negated = jax.random.uniform(sign_key, (num_ops,)) < 0.5

    args = jnp.asarray([op.argument(magnitude) for op in OPS], jnp.float32)
    signed = jnp.asarray([op.signed for op in OPS])

    def branch(op: Op) -> Callable[[Array, Array, Array], Array]:
        if op.name in GEOMETRIC:
            return lambda x, moved, arg: moved
        return lambda x, moved, arg: JAX_OPS[op.name](x, arg)

    branches = [branch(op) for op in OPS]
    which = jnp.asarray([GEOMETRIC.index(op.name) if op.name in GEOMETRIC else -1 for op in OPS])
    x = image.astype(jnp.float32)
    h, w = x.shape[0], x.shape[1]
    for i in range(num_ops):
        k = chosen[i]
        arg = jnp.where(signed[k] & negated[i], -args[k], args[k])
        # Under vmap every branch runs for every image, so the geometric ops share one
        # resampling, by the chosen op's map (the identity when it is not geometric).
        maps = [_coefficients(name, arg, h, w) for name in GEOMETRIC]
        maps.append(jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        moved = _affine(x, jnp.stack(maps)[which[k]])
        out = _pixels(jax.lax.switch(k, branches, x, moved, arg))
        x = jnp.where(applied[i], out, x)
    return x.astype(jnp.uint8)


def make_randaugment(spec: str) -> Callable[[Array, Array], Array] | None:
    """(image, key) -> image for the config's `randaugment` ('N,M'); None when ''."""
    parsed = parse_randaugment(spec)
    if parsed is None:
        return None
    num_ops, magnitude = parsed
    return lambda image, key: randaugment(image, key, num_ops, magnitude)

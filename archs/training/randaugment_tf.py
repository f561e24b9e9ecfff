"""RandAugment in TensorFlow, for the `stream` pipeline's tf.data map.

The table (ops, magnitudes, geometry, fill) and the definition of each op are in
`randaugment`; this module implements the same ops with TensorFlow ops and draws its random
choices from a stateless seed, so a (seed, step, example) always gives the same image.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from archs.training.randaugment import (
    FILL,
    GEOMETRIC,
    OP_PROBABILITY,
    OPS,
    SOLARIZE_ADD_THRESHOLD,
    Op,
    inverse_affine,
    smooth_interior,
)

# ----- float32 (H, W, 3) images holding integers in [0, 255] ---------------------------------


def _pixels(x: tf.Tensor) -> tf.Tensor:
    return tf.round(tf.clip_by_value(x, 0.0, 255.0))


def _blend(degenerate: tf.Tensor, x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return degenerate + factor * (x - degenerate)


def _grayscale(x: tf.Tensor) -> tf.Tensor:
    return tf.round(tf.image.rgb_to_grayscale(x))


def _auto_contrast(x: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    lo, hi = tf.reduce_min(x, axis=(0, 1)), tf.reduce_max(x, axis=(0, 1))
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    return tf.where(hi > lo, (x - lo) * scale, x)


def _equalize_channel(c: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize of one channel."""
    values = tf.cast(c, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    step = (tf.reduce_sum(hist) - tf.gather(hist, tf.reduce_max(values))) // 255
    before = tf.cumsum(hist) - hist
    lut = tf.minimum((before + step // 2) // tf.maximum(step, 1), 255)
    return tf.where(step > 0, tf.cast(tf.gather(lut, values), c.dtype), c)


def _equalize(x: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    return tf.stack([_equalize_channel(x[:, :, i]) for i in range(3)], axis=-1)


def _posterize(x: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    step = 2.0 ** (8.0 - bits)
    return tf.floor(x / step) * step


def _solarize(x: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    return tf.where(x < threshold, x, 255.0 - x)


def _solarize_add(x: tf.Tensor, add: tf.Tensor) -> tf.Tensor:
    return tf.where(x < SOLARIZE_ADD_THRESHOLD, tf.minimum(x + add, 255.0), x)


def _contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return _blend(tf.floor(tf.reduce_mean(_grayscale(x)) + 0.5), x, factor)


def _sharpness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    smooth = smooth_interior(x)
    interior = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth), [[1, 1], [1, 1], [0, 0]], constant_values=1.0)
    degenerate = border * x + (1.0 - border) * interior  # PIL keeps the border
    return _blend(degenerate, x, factor)


def _geometric(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    def transform(x: tf.Tensor, arg: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        a0, a1, a2, b0, b1, b2 = inverse_affine(name, arg, h, w, tf.cos, tf.sin)
        coefficients = [tf.cast(v, tf.float32) for v in (a0, a1, a2, b0, b1, b2, 0.0, 0.0)]
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=tf.stack(coefficients)[None],
            output_shape=shape[:2],
            fill_value=FILL,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )[0]
        # TensorFlow blends in the fill within a pixel of the border; the table's definition
        # (and dm-pix) read the fill only outside [0, W-1] x [0, H-1].
        rows, cols = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
        src_x, src_y = a0 * cols + a1 * rows + a2, b0 * cols + b1 * rows + b2
        inside = (src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)
        return tf.where(inside[:, :, None], out, FILL)

    return transform


TF_OPS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
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


def apply_op(name: str, image: tf.Tensor, arg: tf.Tensor | float) -> tf.Tensor:
    """One op on a float32 (H, W, 3) image of integers in [0, 255]; the result is rounded."""
    return _pixels(TF_OPS[name](image, tf.cast(arg, tf.float32)))


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_ops: int, magnitude: float) -> tf.Tensor:
    """RandAugment of one (H, W, 3) image of integers in [0, 255] (any dtype), keyed by a
    stateless [2] seed; float32 out, still integers in [0, 255]."""
    op_seed, apply_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    chosen = tf.random.stateless_uniform([num_ops], op_seed, 0, len(OPS), dtype=tf.int32)
    applied = tf.random.stateless_uniform([num_ops], apply_seed) < OP_PROBABILITY
    negated = tf.random.stateless_uniform([num_ops], sign_seed) < 0.5

    def branch(op: Op, x: tf.Tensor, negate: tf.Tensor) -> Callable[[], tf.Tensor]:
        arg = op.argument(magnitude)
        signed = tf.where(negate, -arg, arg) if op.signed else arg
        return lambda: apply_op(op.name, x, signed)

    x = tf.cast(image, tf.float32)
    for i in range(num_ops):
        out = tf.switch_case(chosen[i], [branch(op, x, negated[i]) for op in OPS])
        x = tf.where(applied[i], out, x)
    return x

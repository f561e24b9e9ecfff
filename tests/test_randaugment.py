"""RandAugment: the JAX (device) and TensorFlow (tf.data) implementations of one table agree op
by op, each op does what its name says, and both are pure functions of (seed, step, example).

Tolerance of the agreement: pixel values are integers after every op; the two implementations
may differ by 1 (a rounding of a float computed in another order) on at most 1% of the values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from training_support import mock_datasets, tiny_config

from archs.training import data, randaugment, randaugment_tf, steps

MAGNITUDES = (0.0, 5.0, 9.0, 10.0)


def _image(h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A smooth image with values in [20, 220] (so AutoContrast and Equalize have work)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 220, (h // 4 + 1, w // 4 + 1, 3))
    image = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:h, :w]
    return np.round(image + rng.uniform(-8, 8, image.shape)).clip(20, 220).astype(np.float32)


def test_one_table_serves_both_implementations():
    names = [op.name for op in randaugment.OPS]
    assert len(names) == len(set(names)) == 15
    assert set(randaugment.JAX_OPS) == set(randaugment_tf.TF_OPS) == set(names)


@pytest.mark.parametrize("op", randaugment.OPS, ids=lambda op: op.name)
def test_jax_and_tf_agree_op_by_op(op):
    image = _image()
    for magnitude in MAGNITUDES:
        arg = op.argument(magnitude)
        for signed in (arg, -arg) if op.signed else (arg,):
            on_device = np.asarray(randaugment.apply_op(op.name, jnp.asarray(image), signed))
            on_host = randaugment_tf.apply_op(op.name, tf.constant(image), signed).numpy()
            diff = np.abs(on_device - on_host)
            assert diff.max() <= 1, (op.name, magnitude, signed, diff.max())
            assert (diff > 0).mean() <= 0.01, (op.name, magnitude, signed)
            assert np.array_equal(on_device, np.round(on_device))
            assert on_device.min() >= 0 and on_device.max() <= 255


def test_every_op_changes_the_image_at_magnitude_3():
    image = _image()
    for op in randaugment.OPS:
        out = np.asarray(randaugment.apply_op(op.name, jnp.asarray(image), op.argument(3.0)))
        assert not np.array_equal(out, image), op.name


def test_resampling_equals_dm_pix_affine_transform():
    import dm_pix

    image = jnp.asarray(_image())
    rng = np.random.default_rng(0)
    for _ in range(5):
        a0, b1 = rng.uniform(0.7, 1.3, 2)
        a1, b0 = rng.uniform(-0.3, 0.3, 2)
        a2, b2 = rng.uniform(-3, 3, 2)
        ours = randaugment._affine(image, jnp.asarray([a0, a1, a2, b0, b1, b2], jnp.float32))
        matrix = jnp.asarray([[b1, b0, 0], [a1, a0, 0], [0, 0, 1]], jnp.float32)  # (row, col, ch)
        theirs = dm_pix.affine_transform(
            image, matrix, offset=jnp.asarray([b2, a2, 0.0]), mode="constant", cval=randaugment.FILL
        )
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
        assert np.mean(np.asarray(ours) == randaugment.FILL) < 0.5  # mostly resampled


def test_op_arguments_follow_timm():
    by_name = {op.name: op for op in randaugment.OPS}
    # timm auto_augment.py LEVEL_TO_ARG at magnitude 9 (of 10).
    expected = {
        "Rotate": 27.0,
        "Posterize": 3.0,
        "Solarize": 230.0,
        "SolarizeAdd": 99.0,
        "Color": 1.72,
        "ShearX": 0.27,
        "TranslateYRel": 0.405,
    }
    for name, value in expected.items():
        assert by_name[name].argument(9.0) == pytest.approx(value), name


def test_ops_do_what_their_names_say():
    image = _image()
    x = jnp.asarray(image)
    np.testing.assert_array_equal(randaugment.apply_op("Invert", x, 0.0), 255 - image)
    np.testing.assert_array_equal(
        randaugment.apply_op("Posterize", x, 2.0), (image.astype(np.uint8) & 0b11000000)
    )
    solarized = np.where(image < 100, image, 255 - image)
    np.testing.assert_array_equal(randaugment.apply_op("Solarize", x, 100.0), solarized)
    contrast = np.asarray(randaugment.apply_op("AutoContrast", x, 0.0))
    assert (contrast.min(axis=(0, 1)) == 0).all() and (contrast.max(axis=(0, 1)) == 255).all()
    # A quarter turn moves the right edge's middle to the top edge's middle (counter-clockwise).
    dot = np.full((9, 9, 3), 0.0, np.float32)
    dot[4, 8] = 255.0
    turned = np.asarray(randaugment.apply_op("Rotate", jnp.asarray(dot), 90.0))
    assert turned[0, 4, 0] == 255.0 and turned[4, 8, 0] == 0.0
    shifted = np.asarray(randaugment.apply_op("TranslateXRel", jnp.asarray(dot), 2 / 9))
    assert shifted[4, 6, 0] == 255.0 and (shifted[:, 7:] == randaugment.FILL).all()


def _pil_ops():
    """The PIL calls timm's auto_augment.py makes for each op (bilinear, fill 128)."""
    from PIL import Image, ImageEnhance, ImageOps

    geometry = {"resample": Image.BILINEAR, "fillcolor": (128, 128, 128)}

    def affine(im, coefficients):
        return im.transform(im.size, Image.AFFINE, coefficients, **geometry)

    return {
        "AutoContrast": lambda im, _: ImageOps.autocontrast(im),
        "Equalize": lambda im, _: ImageOps.equalize(im),
        "Invert": lambda im, _: ImageOps.invert(im),
        "Posterize": lambda im, a: ImageOps.posterize(im, int(a)),
        "Solarize": lambda im, a: ImageOps.solarize(im, a),
        "SolarizeAdd": lambda im, a: im.point(
            [min(255, i + int(a)) if i < 128 else i for i in range(256)] * 3
        ),
        "Color": lambda im, a: ImageEnhance.Color(im).enhance(a),
        "Contrast": lambda im, a: ImageEnhance.Contrast(im).enhance(a),
        "Brightness": lambda im, a: ImageEnhance.Brightness(im).enhance(a),
        "Sharpness": lambda im, a: ImageEnhance.Sharpness(im).enhance(a),
        "Rotate": lambda im, a: im.rotate(a, **geometry),
        "ShearX": lambda im, a: affine(im, (1, a, 0, 0, 1, 0)),
        "ShearY": lambda im, a: affine(im, (1, 0, 0, a, 1, 0)),
        "TranslateXRel": lambda im, a: affine(im, (1, 0, a * im.size[0], 0, 1, 0)),
        "TranslateYRel": lambda im, a: affine(im, (1, 0, 0, 0, 1, a * im.size[1])),
    }


@pytest.mark.parametrize("op", randaugment.OPS, ids=lambda op: op.name)
def test_ops_match_timms_pil_calls(op):
    """Pixel ops within 1 of PIL (Color within 2: PIL rounds its grayscale in integers);
    geometric ops within 1 except near the border, where PIL's bilinear fill differs."""
    from PIL import Image

    pil = _pil_ops()[op.name]
    image = _image(28, 26)
    for magnitude in (3.0, 9.0):
        arg = op.argument(magnitude)
        ours = np.asarray(randaugment.apply_op(op.name, jnp.asarray(image), arg))
        theirs = np.asarray(pil(Image.fromarray(image.astype(np.uint8)), arg), np.float32)
        diff = np.abs(ours - theirs)
        if op.name in randaugment.GEOMETRIC:
            assert (diff > 1).mean() < 0.05, (op.name, magnitude)
        else:
            assert diff.max() <= (2 if op.name == "Color" else 1), (op.name, magnitude)


@pytest.mark.slow
def test_device_randaugment_is_keyed_by_step_and_example():
    images = jnp.asarray(np.stack([_image(16, 16, seed=s) for s in range(8)]).astype(np.uint8))
    augment = steps.device_augment("flip", 0, "2,9")
    key = jax.random.key(3)
    whole = steps.augment_batch(augment, images, key, 0)
    again = steps.augment_batch(augment, images, key, 0)
    halves = [steps.augment_batch(augment, images[i : i + 4], key, i) for i in (0, 4)]
    assert whole.dtype == jnp.uint8
    np.testing.assert_array_equal(whole, again)
    np.testing.assert_array_equal(whole, jnp.concatenate(halves))
    other_step = steps.augment_batch(augment, images, jax.random.key(4), 0)
    assert not np.array_equal(whole, other_step)
    flip_only = steps.augment_batch(steps.device_augment("flip", 0), images, key, 0)
    assert not np.array_equal(whole, flip_only)


def test_host_randaugment_is_a_pure_function_of_the_seed():
    image = tf.constant(_image(16, 16).astype(np.uint8))
    outs = [
        randaugment_tf.randaugment(image, tf.constant([s, 7], tf.int64), 3, 9.0).numpy()
        for s in (1, 1, 2)
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


@pytest.mark.slow
def test_stream_pipeline_applies_randaugment_and_resumes_exactly():
    with mock_datasets():
        c = tiny_config(dataset="imagenet2012", data_pipeline="stream", augment="inception")
        source = data.open_source(c)
        info = type("Info", (), {"image_size": 32, "crop_pct": 1.0})()
        preprocess = {
            spec: data.make_preprocess(
                tiny_config(augment="inception", randaugment=spec), info, source
            )
            for spec in ("", "2,9")
        }
        plain, augmented = (
            data.TrainData(source, 4, seed=0, preprocess=preprocess[s], buffer=8)
            for s in ("", "2,9")
        )
        from_start = augmented.batches(0)
        expected = [next(from_start) for _ in range(3)][-1]
        resumed = next(augmented.batches(2))
        unaugmented = next(plain.batches(2))
    np.testing.assert_array_equal(resumed["image"], expected["image"])
    assert not np.array_equal(resumed["image"], unaugmented["image"])
    np.testing.assert_array_equal(resumed["label"], unaugmented["label"])
    assert data.device_randaugment(source, preprocess["2,9"]) == ""

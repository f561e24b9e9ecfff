"""The model registry: names to builders, each with its preprocessing and reference figures.

Families register their networks with `register`; users call `create_model`, `list_models`
and `model_info` (re-exported by `archs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from archs import references
from archs.checks import check, check_positive_int
from archs.convolution import LAX, ConvImpl

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model's input is prepared, kept apart from its architecture (as timm keeps its
    pretrained configs apart from its models): images scaled to [0, 1], resized so the short
    side is `image_size / crop_pct` with `interpolation`, centre-cropped to `image_size`, then
    `(x - mean) / std` per channel."""

    image_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"


IMAGENET = Preprocessing()
"""torchvision's ImageNet evaluation: 224 from 256, bilinear, ImageNet mean and std."""

CIFAR10 = Preprocessing(image_size=32, crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD)
"""CIFAR-10 images as they are, normalised with the training set's mean and std."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a user needs to feed and judge a model.

    Input: images scaled to [0, 1] (`input_range`), then `(x - mean) / std` per channel,
    resized so the short side is `image_size / crop_pct` and centre-cropped to `image_size`.
    """

    name: str
    family: str
    image_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    aux_weight: float
    reference_params: int | None
    reference_gmacs: float | None
    reference_source: str
    input_range: tuple[float, float] = (0.0, 1.0)
    interpolation: str = "bilinear"
    structure: str = "torchvision"
    """'torchvision' / 'timm' (that library's exact structure) or 'paper' (the paper's own net)."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nnx.Module]
    info: ModelInfo


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    builder: Callable[..., nnx.Module],
    *,
    family: str,
    structure: str = "torchvision",
    preprocessing: Preprocessing = IMAGENET,
    num_classes: int = 1000,
    aux_weight: float = 0.0,
) -> None:
    """Add a model. `builder(num_classes=, rngs=, dtype=, conv=, **overrides)` returns the
    module; its other keywords are the architecture's (bind a variant's with
    `functools.partial`); `num_classes` is the default head's size and `aux_weight` the loss
    weight of auxiliary classifiers."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    ref = references.REFERENCES.get(name)
    info = ModelInfo(
        name=name,
        family=family,
        image_size=preprocessing.image_size,
        num_classes=num_classes,
        mean=preprocessing.mean,
        std=preprocessing.std,
        crop_pct=preprocessing.crop_pct,
        aux_weight=aux_weight,
        reference_params=ref.params if ref else None,
        reference_gmacs=ref.gmacs if ref else None,
        reference_source=ref.source if ref else "",
        interpolation=preprocessing.interpolation,
        structure=structure,
    )
    _REGISTRY[name] = _Entry(builder, info)


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (archs.list_models() lists all {len(_REGISTRY)})"
        )
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """Preprocessing and reference figures of a registered model."""
    return _entry(name).info


def model_overrides(name: str) -> list[str]:
    """The keyword overrides `create_model(name, ...)` accepts."""
    builder = _entry(name).builder
    target = builder.func if isinstance(builder, functools.partial) else builder
    # nnx.Module classes hide their __init__ signature behind the metaclass's __call__.
    params = inspect.signature(target.__init__ if isinstance(target, type) else target).parameters
    skip = ("self", "num_classes", "rngs", "dtype", "conv")
    return sorted(
        p
        for p, spec in params.items()
        if p not in skip and spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD)
    )


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    rngs: nnx.Rngs | None = None,
    dtype: Any = jnp.float32,
    conv: ConvImpl = LAX,
    **overrides: Any,
) -> nnx.Module:
    """Build a registered network with float32 parameters and `dtype` compute.

    `conv` chooses the convolution functions (`archs.convolution`; e.g.
    `archs.fast_conv.for_backend(jax.default_backend())`): it changes how the network is
    computed, never what, so it is not an override.
    """
    entry = _entry(name)
    allowed = model_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(unknown)} for model {name!r}; allowed: "
            f"{', '.join(allowed) or 'none'}"
        )
    if num_classes is not None:
        check_positive_int("num_classes", num_classes)
    check("conv", conv, "an archs.convolution.ConvImpl", isinstance(conv, ConvImpl))
    return entry.builder(
        num_classes=num_classes or entry.info.num_classes,
        rngs=rngs if rngs is not None else nnx.Rngs(0),
        dtype=dtype,
        conv=conv,
        **overrides,
    )

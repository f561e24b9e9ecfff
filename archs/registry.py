"""The model registry: names to builders, each with its preprocessing and reference figures.

Families register their networks with `register`; users call `create_model`, `list_models`
and `model_info` (re-exported by `archs`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import types
import typing
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


def _override_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The builder's keyword parameters a user may override, with their annotations resolved
    and the registered defaults (a `functools.partial`'s keywords) in place of the builder's."""
    builder = _entry(name).builder
    target = builder.func if isinstance(builder, functools.partial) else builder
    bound = builder.keywords if isinstance(builder, functools.partial) else {}
    # nnx.Module classes hide their __init__ signature behind the metaclass's __call__.
    function = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that does not resolve: check by default
        hints = {}
    skip = ("self", "num_classes", "rngs", "dtype", "conv")
    params = {}
    for key, spec in inspect.signature(function).parameters.items():
        if key in skip or spec.kind not in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD):
            continue
        params[key] = spec.replace(
            default=bound.get(key, spec.default), annotation=hints.get(key, spec.annotation)
        )
    return params


def model_overrides(name: str) -> list[str]:
    """The keyword overrides `create_model(name, ...)` accepts."""
    return sorted(_override_parameters(name))


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a parameter annotation (types this cannot check are accepted: the
    builder checks them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (collections.abc.Sequence, tuple, list):
        return isinstance(value, tuple | list)
    return True


def _kind(annotation: Any) -> str:
    """An annotation in words: 'True or False', 'an int', 'a str or a sequence', ..."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in typing.get_args(annotation))
    if origin in (collections.abc.Sequence, tuple, list):
        return "a sequence"
    words = {bool: "True or False", int: "an int", float: "a number", str: "a str"}
    return words.get(annotation, "None" if annotation is type(None) else str(annotation))


def check_overrides(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` checked against `name`'s builder: each key one of its keywords (a misspelt
    one raises ValueError naming the close matches), each value of the keyword's type. Values
    are returned as the builder takes them: lists as tuples, and numbers or booleans given for
    a str-only keyword (as a command line may parse them) as their text."""
    params = _override_parameters(name)
    checked = {}
    for key, value in overrides.items():
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown override {key!r} for model {name!r}{hint} (allowed: "
                f"{', '.join(sorted(params)) or 'none'})"
            )
        annotation = params[key].annotation
        if isinstance(value, list):
            value = tuple(value)
        if annotation is not inspect.Parameter.empty and not _accepts(annotation, value):
            if _accepts(annotation, str(value)) and not isinstance(value, tuple):
                value = str(value)
            else:
                raise ValueError(
                    f"{key} must be {_kind(annotation)}, got {value!r} (a keyword of "
                    f"{name!r}, default {params[key].default!r})"
                )
        checked[key] = value
    return checked


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
    overrides = check_overrides(name, overrides)
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

"""Training recipes, one module per dataset, each with `get_config(arg=None)`.

train.py loads a config file by path (`--config=configs/cifar10.py:ARG`); a config file imports
its siblings as `configs.NAME`, which resolves from the repository root (where train.py lives,
so it is on `sys.path`). docs/recipes.md tabulates every recipe against its paper.

A recipe is a function that sets the keys its paper gives on top of
`archs.training.base_config()`. ARG is `MODEL[,RECIPE]`; without RECIPE a model gets the recipe
of its family (`archs.model_info(model).family`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_collections

import archs

Recipe = Callable[[ml_collections.ConfigDict, str], None]


def parse_arg(
    arg: str | None,
    default: str,
    recipes: Mapping[str, Recipe],
    by_family: Mapping[str, str],
    fallback: str,
) -> tuple[str, Recipe]:
    """(model, recipe) for `arg` = MODEL[,RECIPE] (`default` when arg is empty); a model named
    without a recipe gets its family's (`by_family`, else `fallback`)."""
    model, _, name = (arg or default).partition(",")
    if not name:
        name = by_family.get(archs.model_info(model).family, fallback)
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; allowed: {', '.join(recipes)}")
    return model, recipes[name]

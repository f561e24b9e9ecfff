"""A model's variables on disk: the one writer and reader of model state, for `archs.convert`
and the training system.

A variable is named by its module path joined with '/', list indices as digits
(`layer1/0/conv1/kernel`): `key(path)`, the names orbax gives the nested dicts it writes.

- `save_state(model, directory)` writes `nnx.to_pure_dict(nnx.state(model))` (parameters,
  BatchNorm statistics, RNG state) with orbax's StandardCheckpointer: what
  `python -m archs.convert` writes. `restore_state(model, directory)` puts it back into a model
  built with the same name, `num_classes` and overrides.
- `read_model_state(path)` reads the variables, flat by key, of a `save_state` directory or of
  the training system's checkpoints: a workdir (its latest checkpoint), or a directory of
  numbered checkpoints whose `state` item holds `params` and `model_state`.
- `load_into(source, state)` copies what matches (key and shape) into a model's state, for
  `init_from`.
- The head: `head_keys(model, wider)`, the variables whose shapes depend on `num_classes` (the
  classifier and auxiliary classifiers), which a new `num_classes` leaves freshly initialised.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import nnx


class StateError(ValueError):
    """Model state that cannot be written where asked, or does not fit the model."""


def key(path: tuple) -> str:
    """The '/'-joined name of a variable's path (nnx path entries, or jax tree keys: a dict's
    key, an attribute's name, a sequence's index)."""
    return "/".join(
        str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))
        for entry in path
    )


def _flat(tree: Any) -> dict[str, Any]:
    return {key(path): v for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat_state(state: nnx.State) -> dict[str, Any]:
    """A model's variables flat by key, as `read_model_state` returns them."""
    return _flat(nnx.to_pure_dict(state))


def head_keys(model: nnx.Module, wider: nnx.Module) -> set[str]:
    """Keys of the variables whose shapes depend on num_classes: those that differ from
    `wider`, the same network built with one class more (abstract models will do)."""
    theirs = flat_state(nnx.state(wider))
    return {k for k, v in flat_state(nnx.state(model)).items() if v.shape != theirs[k].shape}


def saved_steps(directory: str) -> list[int]:
    """The numbered (finished) checkpoints in `directory`, read without creating anything."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def save_state(model: nnx.Module, directory: str | os.PathLike) -> str:
    """Write every variable of `model` as an orbax checkpoint at the new `directory`; returns
    its absolute path."""
    import orbax.checkpoint as ocp

    directory = new_directory(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, nnx.to_pure_dict(nnx.state(model)))
    checkpointer.wait_until_finished()
    return directory


def new_directory(directory: str | os.PathLike) -> str:
    """`directory` as an absolute path, refused (StateError) if it exists."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise StateError(f"{directory!r} already exists; choose a new directory")
    return directory


def restore_state(model: nnx.Module, directory: str | os.PathLike) -> nnx.Module:
    """Load a `save_state` checkpoint into `model` (same name, num_classes and overrides).

    `model` may be abstract (`nnx.eval_shape`): restoring makes it concrete.
    """
    import orbax.checkpoint as ocp

    state = nnx.state(model)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(os.fspath(directory)), target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def read_model_state(path: str) -> dict[str, np.ndarray]:
    """The model variables of a checkpoint, flat by key, as host arrays whatever devices wrote
    them (a run saved on 8 devices starts one on 1).

    `path` is a training workdir (its latest checkpoint), a directory of numbered training
    checkpoints, or a `save_state` directory.
    """
    path = os.path.abspath(path)
    for candidate in (os.path.join(path, "checkpoints"), path):
        steps = saved_steps(candidate)
        if steps:
            tree = _restore_on_host(os.path.join(candidate, str(steps[-1]), "state"))
            return {**_flat(tree["params"]), **_flat(tree["model_state"])}
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    return _flat(_restore_on_host(path))


def _restore_on_host(path: str) -> Any:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    layout = checkpointer.metadata(path).item_metadata.tree
    on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), layout)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=on_host))


def load_into(source: dict[str, np.ndarray], state: nnx.State) -> list[str]:
    """Copy the variables of `source` (flat by key) whose key and shape match into `state`,
    in place; returns the keys of those left as initialised (for fine-tuning with another
    num_classes: the head, see `head_keys`)."""
    fresh = []

    def pick(path: tuple, value: Any) -> Any:
        name = key(path)
        if name in source and np.shape(source[name]) == np.shape(value):
            return np.asarray(source[name], dtype=np.asarray(value).dtype)
        fresh.append(name)
        return value

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(pick, nnx.to_pure_dict(state)))
    return fresh

"""torchvision/timm checkpoints -> archs model state: `load_pretrained`, `python -m archs.convert`.

Every family names its submodules after the reference's modules, so a torch key is our
module path joined with dots plus the torch name of the variable, after the family's few
renames in `KEY_RULES` (see each family module's docstring):

    ours (nnx path)                   torch key                       layout
    <conv>.kernel   (kh, kw, I/g, O)  <conv>.weight  (O, I/g, kh, kw)  transposed
    <conv>.bias                       <conv>.bias
    <linear>.kernel (in, out)         <linear>.weight (out, in)        transposed
    <linear>.bias                     <linear>.bias
    <bn>.scale / bias / mean / var    <bn>.weight / bias / running_mean / running_var
    (none)                            <bn>.num_batches_tracked         ignored

Checkpoint keys are first normalised: a DataParallel `module.` prefix is dropped and
torchvision's old DenseNet spellings (`denselayer1.norm.1.weight`) become the current ones
(`denselayer1.norm1.weight`). The classifier (and auxiliary classifiers) are the variables
whose shapes depend on `num_classes` (`archs.model_state.head_keys`); when the checkpoint's
head does not fit the requested `num_classes` they keep their fresh initialisation. Anything
else that does not match, a missing key, a key left over or a wrong shape, is a
`ConversionError` naming the first one.

Readers: `.safetensors` through the `safetensors` package's numpy API (no torch needed);
`.pth`/`.pt`/`.bin` through `torch.load(path, weights_only=True, map_location='cpu')`, which
unpickles tensors and plain containers only, never arbitrary code; the result must be a flat
dict of tensors (a `state_dict`), anything else is refused.

Converted checkpoints (`python -m archs.convert --model NAME --from FILE --out DIR`) are
written by `archs.model_state.save_state`: every variable of the model, keyed by our module
path. `archs.model_state.restore_state(model, DIR)` puts it back into a model built with the
same name, `num_classes` and overrides (`--model-kwargs`, which the checkpoint does not
record: give training the same `config.model_kwargs`); `config.init_from=DIR` does the same
at step 0. Error messages name our variables by `archs.model_state.key` (`fc/kernel`), torch's
by their own dotted keys.

Stacked blocks (ResNet's `scan_blocks`: one variable for blocks `layer3.1`..`layer3.5`, on a
leading axis) map to one torch key per block, stacked in order (`torch_layout`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archs import model_state, registry
from archs.cli_errors import ExitCode, first_line

StateDict = dict[str, np.ndarray]


class ConversionError(ValueError):
    """A checkpoint that does not fit the model; the message names the first problem."""


# Per family: (pattern, replacement) applied in order to our dotted module path to get the
# reference's module path, for the few places where the structures differ in nesting.
KEY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    # torchvision keeps everything but the classifier in a `features` Sequential.
    "densenet": ((r"^(?!classifier(\.|$))", "features."),),
    # `features` is our method name, so their `features` Sequential is our `feature_layers`.
    "alexnet": ((r"^feature_layers\b", "features"),),
    "vgg": ((r"^feature_layers\b", "features"),),
    # SENet-154's deep stem: our conv1.0-4 are timm's conv1.0, 1, 3, 4, 6 (ReLUs between).
    "senet": ((r"^conv1\.4$", "conv1.6"), (r"^conv1\.3$", "conv1.4"), (r"^conv1\.2$", "conv1.3")),
}

_OLD_DENSENET_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


class Source(NamedTuple):
    """Where one of our variables comes from: its torch key (one per block, in order, for
    blocks stacked on axis 0), and the axes that turn the torch layout into ours
    (`ours = np.transpose(theirs, axes)`; None when the layouts agree)."""

    keys: tuple[str, ...]
    axes: tuple[int, ...] | None
    stacked: bool = False

    def to_ours(self, values: list[np.ndarray]) -> np.ndarray:
        ours = [v if self.axes is None else np.transpose(v, self.axes) for v in values]
        return np.stack(ours) if self.stacked else ours[0]

    def torch_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of each torch tensor for a variable of our shape."""
        shape = tuple(our_shape[1:] if self.stacked else our_shape)
        if self.axes is None:
            return shape
        return tuple(shape[self.axes.index(i)] for i in range(len(self.axes)))


_OIHW_TO_HWIO = (2, 3, 1, 0)
_OUT_IN_TO_IN_OUT = (1, 0)

# Per layer type, our variable name -> (torch variable name, layout axes).
_LAYER_VARIABLES: dict[type, dict[str, tuple[str, tuple[int, ...] | None]]] = {
    nnx.Conv: {"kernel": ("weight", _OIHW_TO_HWIO), "bias": ("bias", None)},
    nnx.Linear: {"kernel": ("weight", _OUT_IN_TO_IN_OUT), "bias": ("bias", None)},
    nnx.BatchNorm: {
        "scale": ("weight", None),
        "bias": ("bias", None),
        "mean": ("running_mean", None),
        "var": ("running_var", None),
    },
}


def read_checkpoint(path: str | os.PathLike) -> StateDict:
    """A torch state_dict from `.safetensors` or `.pth`, as numpy arrays with normalised keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint {path!r} does not exist")
    raw = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
    return normalize_keys(raw)


def _read_safetensors(path: str) -> StateDict:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as err:  # the package raises several types for a bad file
        raise ConversionError(f"cannot read {path!r} as safetensors: {first_line(err)}") from err


def _read_torch(path: str) -> StateDict:
    try:
        import torch
    except ImportError as err:
        raise ConversionError(
            f"reading {path!r} needs torch (pip install torch), or convert it to .safetensors"
        ) from err
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # unpickling errors come in many types
        raise ConversionError(
            f"cannot read {path!r} as a torch state_dict: {first_line(err)}"
        ) from err
    if not isinstance(loaded, dict):
        raise ConversionError(
            f"{path!r} holds a {type(loaded).__name__}, not a state_dict (a flat dict of tensors)"
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path!r} is not a flat dict of tensors: entry {key!r} is a "
                f"{type(value).__name__} (save model.state_dict() itself)"
            )
    return {
        key: value.detach().float().numpy() if value.is_floating_point() else value.numpy()
        for key, value in loaded.items()
    }


def normalize_keys(state_dict: StateDict) -> StateDict:
    """Drop `num_batches_tracked` and a `module.` prefix; current DenseNet key spellings."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.removeprefix("module.")
        out[_OLD_DENSENET_KEY.sub(r"\1\2.", key)] = np.asarray(value)
    return out


def _torch_module_name(path: tuple, family: str) -> str:
    name = ".".join(str(p) for p in path)
    for pattern, replacement in KEY_RULES.get(family, ()):
        name = re.sub(pattern, replacement, name)
    return name


def torch_layout(model: nnx.Module, family: str) -> dict[tuple, Source]:
    """Our variable path -> its torch source, for every variable of the model's layers.

    Works on abstract models (`nnx.eval_shape`) too: it reads structure only. A variable with
    one axis more than its layer type has holds blocks stacked for `nnx.scan` (ResNet's
    `scan_blocks`): entry k of it is the block whose index (the first integer of the path)
    is k more than the stack's.
    """
    layout = {}
    for module_path, layer in nnx.iter_modules(model):
        variables = next((v for t, v in _LAYER_VARIABLES.items() if isinstance(layer, t)), None)
        if variables is None:
            continue
        for ours, (theirs, axes) in variables.items():
            variable = getattr(layer, ours, None)
            if variable is None:
                continue
            stacked = len(variable.shape) > (len(axes) if axes else 1)
            paths = _block_paths(module_path, variable.shape[0]) if stacked else [module_path]
            keys = tuple(f"{_torch_module_name(p, family)}.{theirs}" for p in paths)
            layout[(*module_path, ours)] = Source(keys, axes, stacked)
    for path, _ in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        if path not in layout:
            raise ConversionError(f"our variable {model_state.key(path)} has no torch counterpart")
    return layout


def _block_paths(stack_path: tuple, count: int) -> list[tuple]:
    first = next(i for i, p in enumerate(stack_path) if isinstance(p, int))
    return [
        (*stack_path[:first], stack_path[first] + k, *stack_path[first + 1 :]) for k in range(count)
    ]


def convert_state(
    model: nnx.Module,
    state_dict: StateDict,
    *,
    family: str,
    head: Collection[str] = frozenset(),
    keep_fresh_head: bool = False,
    label: str = "the model",
) -> None:
    """Copy a normalised torch state_dict into `model` in place.

    `head` holds the keys (`archs.model_state.key`) of our variables that depend on
    num_classes (`archs.model_state.head_keys`): with `keep_fresh_head` they keep their
    initialisation when the checkpoint's shapes differ.
    """
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    layout = torch_layout(model, family)
    for path, source in layout.items():
        variable = flat[path]
        missing = [key for key in source.keys if key not in state_dict]
        if missing:
            raise ConversionError(
                f"checkpoint has no key {missing[0]!r} (for {label}'s {model_state.key(path)})"
            )
        expected = source.torch_shape(variable.shape)
        wrong = [key for key in source.keys if tuple(state_dict[key].shape) != expected]
        if wrong:
            in_head = model_state.key(path) in head
            if keep_fresh_head and in_head:
                continue
            hint = " (pass num_classes= for a new head)" if in_head else ""
            raise ConversionError(
                f"checkpoint key {wrong[0]!r} has shape {tuple(state_dict[wrong[0]].shape)}, "
                f"{label}'s {model_state.key(path)} needs {expected}{hint}"
            )
        value = source.to_ours([state_dict[key] for key in source.keys])
        variable.set_value(jnp.asarray(value, dtype=variable.dtype))
    used = {key for source in layout.values() for key in source.keys}
    extra = [key for key in state_dict if key not in used]
    if extra:
        raise ConversionError(
            f"checkpoint key {extra[0]!r} matches nothing in {label} ({len(extra)} unused keys)"
        )
    nnx.update(model, state)


def load_pretrained(
    name: str,
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    rngs: nnx.Rngs | None = None,
    **overrides: Any,
) -> nnx.Module:
    """Build model `name` and load a torchvision/timm checkpoint into it (eval mode).

    With a `num_classes` the checkpoint's classifier does not fit, the classifier (and aux
    classifiers) are freshly initialised from `rngs`. `overrides` go to `create_model`: e.g.
    torchvision's ImageNet GoogLeNet weights expect `transform_input=True`, as torchvision
    sets when it loads them.
    """
    return from_state_dict(
        name, read_checkpoint(path), num_classes=num_classes, rngs=rngs, **overrides
    )


def from_state_dict(
    name: str,
    state_dict: StateDict,
    *,
    num_classes: int | None = None,
    rngs: nnx.Rngs | None = None,
    **overrides: Any,
) -> nnx.Module:
    """`load_pretrained` from a torch state_dict already in memory (numpy arrays)."""
    info = registry.model_info(name)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    classes = num_classes or info.num_classes

    def create(rngs: nnx.Rngs, num_classes: int = classes) -> nnx.Module:
        return registry.create_model(name, num_classes=num_classes, rngs=rngs, **overrides)

    # Only what the checkpoint does not hold (a fresh head, RNG state) is initialised.
    model = nnx.eval_shape(create, rngs)
    convert_state(
        model,
        normalize_keys(state_dict),
        family=info.family,
        head=model_state.head_keys(model, nnx.eval_shape(lambda r: create(r, classes + 1), rngs)),
        keep_fresh_head=num_classes is not None,
        label=name,
    )
    _initialize_rest(model, create, rngs)
    model.eval()
    return model


def _initialize_rest(
    model: nnx.Module, create: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs
) -> None:
    """Give the variables still abstract the values `create(rngs)` would give them.

    One jitted build returns just those variables; XLA drops every other initialiser, so
    this costs a trace, not the initialisation of the whole network.
    """
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    todo = [p for p, v in flat.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]

    @nnx.jit
    def initial_values(rngs: nnx.Rngs) -> list[jax.Array]:
        fresh = dict(nnx.to_flat_state(nnx.state(create(rngs))))
        return [fresh[p].get_value() for p in todo]

    for path, value in zip(todo, initial_values(rngs) if todo else [], strict=True):
        flat[path].set_value(value)
    nnx.update(model, state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archs.convert",
        description="Convert a torchvision/timm checkpoint into an orbax checkpoint of an archs "
        "model's state, for training's config.init_from.",
    )
    parser.add_argument("--model", required=True, help="an archs model name")
    parser.add_argument("--from", dest="source", required=True, help=".pth or .safetensors")
    parser.add_argument("--out", required=True, help="new directory for the orbax checkpoint")
    parser.add_argument("--num-classes", type=int, default=None, help="fresh head of this size")
    parser.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help="create_model overrides as JSON, e.g. '{\"transform_input\": true}' (use the same "
        "config.model_kwargs in training)",
    )
    args = parser.parse_args(argv)
    try:
        model_state.new_directory(args.out)  # before the slow part
        model = load_pretrained(
            args.model, args.source, num_classes=args.num_classes, **args.model_kwargs
        )
        out = model_state.save_state(model, args.out)
    except ValueError as err:  # ConversionError, StateError, the registry's bad name or value
        print(f"convert: error: {first_line(err)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(f"wrote {args.model} to {out}")
    return ExitCode.COMPLETE


if __name__ == "__main__":
    sys.exit(main())

"""Optax optimizers and learning-rate schedules, named as in the config contract (docs/design.md).

Weight decay follows each paper: coupled L2 for SGD and RMSProp (added to the gradient before
momentum, as PyTorch's SGD, the papers' Caffe/Torch solvers and TensorFlow's L2 regularisers do),
decoupled for AdamW, LARS's own decay inside the trust ratio.

What decay and LARS apply to is decided by a parameter's role, read from its name in the model
state (`parameter_roles`): a `kernel` is a weight; a `scale`, and the `bias` beside it, belong to
a normalisation layer; any other `bias` is a bias. `weight_decay_exclude_norm_bias` leaves the
last two undecayed and out of LARS's trust ratio. A model whose identical blocks are stacked for
`nnx.scan` (ResNet's `scan_blocks`) holds the same parameters with leading stack axes
(`stack_depths` finds them): the roles are the same, and LARS computes one trust ratio per layer
of a stack, so a scanned model trains as the unscanned one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from archs.training.errors import ConfigError

WEIGHT, NORM, BIAS = "weight", "norm", "bias"

# A normalisation layer's scale and shift and a layer's bias are vectors: any axes before their
# one axis are stack axes.
VECTOR_ROLES = (NORM, BIAS)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The configured lr, scaled linearly with the batch size when asked (Goyal et al.)."""
    if config.lr_base_batch_size > 0:
        return config.learning_rate * config.batch_size / config.lr_base_batch_size
    return config.learning_rate


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """A warmup over `warmup_epochs`, then the `schedule` named in the config.

    The warmup starts at `warmup_start_factor * learning_rate` (the rate before linear batch
    scaling: Goyal et al. start from the per-256-images rate) and either ramps linearly to the
    peak or holds there until the peak takes over (`warmup_shape='constant'`: He et al.'s
    ResNet-110). Step boundaries are fractions of the whole run, warmup included.
    """
    peak = peak_learning_rate(config)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if warmup > total_steps:
        raise ConfigError(
            f"warmup_epochs={config.warmup_epochs!r} ({warmup} steps) is longer than the run "
            f"({total_steps} steps)"
        )
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps)
    elif config.schedule == "polynomial":
        main = optax.polynomial_schedule(peak, 0.0, config.lr_decay_power, decay_steps)
    elif config.schedule == "step":
        boundaries = {
            max(round(f * total_steps) - warmup, 0): config.lr_decay_factor
            for f in config.lr_boundaries
        }
        main = optax.piecewise_constant_schedule(peak, boundaries)
    elif config.schedule == "exponential":
        every = max(round(config.lr_decay_epochs * steps_per_epoch), 1)
        main = optax.exponential_decay(peak, every, config.lr_decay_factor, staircase=True)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}")
    if warmup == 0:
        return main
    start = config.warmup_start_factor * config.learning_rate
    if config.warmup_shape == "constant":
        ramp = optax.constant_schedule(start)
    else:
        ramp = optax.linear_schedule(start, peak, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def _names(path: tuple) -> tuple:
    """A pytree key path as plain names, without the `value` of an nnx.Variable."""
    names = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return names


def _role(names: tuple, siblings: set) -> str:
    leaf = names[-1]
    if leaf == "kernel":
        return WEIGHT
    if leaf == "scale" or (leaf == "bias" and "scale" in siblings and "kernel" not in siblings):
        return NORM
    if leaf == "bias":
        return BIAS
    raise ValueError(
        f"parameter {'/'.join(map(str, names))}: no role for a parameter named {leaf!r} "
        "(known: kernel, scale, bias)"
    )


def _flatten(params: Any) -> tuple[list[tuple], list, Any]:
    """Every leaf's names, its value, and the tree structure to rebuild a per-leaf tree."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [_names(path) for path, _ in flat], [leaf for _, leaf in flat], treedef


def _roles_of(names: list[tuple]) -> list[str]:
    siblings = collections.defaultdict(set)
    for n in names:
        siblings[n[:-1]].add(n[-1])
    return [_role(n, siblings[n[:-1]]) for n in names]


def parameter_roles(params: Any) -> Any:
    """'weight', 'norm' or 'bias' for every parameter, by its name (see the module docstring)."""
    names, _, treedef = _flatten(params)
    return jax.tree.unflatten(treedef, _roles_of(names))


def stack_depths(params: Any) -> Any:
    """How many leading stack axes every parameter has (0 unless its layers are stacked).

    A vector (normalisation scale or shift, bias) has one axis of its own, so the axes before it
    are stack axes. A kernel has the depth of the nearest vectors: those of the innermost module
    around it that holds any (a stacked block holds its BatchNorms or biases), the fewest levels
    below that module; 0 when there are none.
    """
    names, values, treedef = _flatten(params)
    return jax.tree.unflatten(treedef, _depths_of(names, values))


def _depths_of(names: list[tuple], values: list) -> list[int]:
    roles = _roles_of(names)
    # module path -> {levels below it: depths of the vectors that many levels below}
    under = collections.defaultdict(lambda: collections.defaultdict(set))
    for n, v, r in zip(names, values, roles, strict=True):
        if r in VECTOR_ROLES:
            for k in range(len(n)):
                under[n[:k]][len(n) - k].add(v.ndim - 1)
    out = []
    for n, v, r in zip(names, values, roles, strict=True):
        if r in VECTOR_ROLES:
            out.append(v.ndim - 1)
            continue
        around = next((under[n[:k]] for k in range(len(n) - 1, -1, -1) if n[:k] in under), {})
        found = around[min(around)] if around else {0}
        if len(found) > 1:
            raise ValueError(
                f"parameter {'/'.join(map(str, n))}: the vectors around it disagree on its "
                f"stack depth {sorted(found)}"
            )
        out.append(next(iter(found)))
    return out


def _decayed(params: Any) -> Any:
    return jax.tree.map(lambda role: role == WEIGHT, parameter_roles(params))


def scale_by_layer_trust_ratio(
    trust_coefficient: float, mask: Callable[[Any], Any] | None = None
) -> optax.GradientTransformation:
    """optax's LARS trust ratio (You et al. 2017, Algorithm 1) computed per layer: separately
    for each slice of a stacked parameter. `mask(params)` selects the parameters it scales."""
    inner = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient)

    def scale(update, param):
        return inner.update(update, optax.EmptyState(), param)[0]

    def one(update, param, depth, adapt):
        if not adapt:
            return update
        per_layer = scale
        for _ in range(depth):
            per_layer = jax.vmap(per_layer)
        return per_layer(update, param)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("the LARS trust ratio needs the parameters: pass them to update")
        adapt = mask(params) if mask else jax.tree.map(lambda _: True, params)
        return jax.tree.map(one, updates, params, stack_depths(params), adapt), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer named by `config.optimizer`, with its weight decay, behind global-norm
    gradient clipping when `grad_clip_norm` > 0."""
    return clipped(_optimizer(config, schedule), config.grad_clip_norm)


def clipped(tx: optax.GradientTransformation, max_norm: float) -> optax.GradientTransformation:
    """`tx` behind `optax.clip_by_global_norm(max_norm)` (`tx` itself when max_norm is 0). The
    clip runs first, on the gradient the train step hands to the optimizer: once per optimizer
    step, on the average of the micro-batches' gradients under gradient accumulation, and
    before SGD's coupled weight decay is added (as timm clips `param.grad` before
    `optimizer.step()`, where PyTorch's SGD adds the decay)."""
    if max_norm <= 0:
        return tx
    return optax.chain(optax.clip_by_global_norm(max_norm), tx)


def _optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    mask = _decayed if config.weight_decay_exclude_norm_bias else None
    momentum = config.momentum or None
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov),
        )
    if config.optimizer == "rmsprop":
        # TensorFlow's RMSProp, which Szegedy et al. trained with: eps inside the square root,
        # the mean square starting at 1, lr applied before momentum.
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            optax.rmsprop(
                schedule,
                decay=config.rmsprop_decay,
                eps=config.rmsprop_eps,
                initial_scale=1.0,
                eps_in_sqrt=True,
                momentum=momentum,
                nesterov=config.nesterov,
            ),
        )
    if config.optimizer == "adamw":
        return optax.adamw(
            schedule,
            b1=config.adam_b1,
            b2=config.adam_b2,
            weight_decay=config.weight_decay,
            mask=mask,
        )
    if config.optimizer == "lars":
        # optax.lars's chain with the trust ratio per layer of a stack.
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            scale_by_layer_trust_ratio(config.lars_trust_coefficient, mask),
            optax.scale_by_learning_rate(schedule),
            optax.trace(decay=config.momentum, nesterov=config.nesterov),
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")

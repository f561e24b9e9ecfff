"""An exponential moving average of the weights: parameters and BatchNorm statistics.

Kept in the train state (`TrainState.ema`, None when `ema_decay` is 0) and updated once per
optimizer step, after the update, as `ema = decay * ema + (1 - decay) * new` through
`optax.incremental_update`; like timm's `ModelEmaV2`/`ModelEmaV3` it averages every floating
variable (BatchNorm running statistics included) and copies the others.

`ema_warmup` follows timm's `ModelEmaV3(use_warmup=True)` with its defaults (gamma 1, power
2/3): the decay of the update after t completed updates is min(ema_decay, 1 - (1 + t)^(-2/3)),
so the first update copies the weights and the average forgets the random initialisation within
a few hundred steps instead of ~1/(1 - ema_decay) (10,000 steps at 0.9999, longer than many
CIFAR runs' first evaluations).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array

WARMUP_POWER = 2 / 3  # timm ModelEmaV3's default


@flax.struct.dataclass
class EmaWeights:
    """The averaged `params` and `model_state` (same trees as the train state's)."""

    params: Any
    model_state: Any


def init(params: Any, model_state: Any) -> EmaWeights:
    """The average at step 0: a copy of the weights."""
    return EmaWeights(*jax.tree.map(jnp.array, (params, model_state)))


def decay_at(updates_done: Array, decay: float, warmup: bool) -> Array:
    """The decay of the update that follows `updates_done` completed updates."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    t = jnp.asarray(updates_done, jnp.float32)
    return jnp.minimum(decay, 1.0 - (1.0 + t) ** -WARMUP_POWER)


def update(ema: EmaWeights, params: Any, model_state: Any, decay: Array) -> EmaWeights:
    """decay * ema + (1 - decay) * new for floating leaves; other leaves take the new value."""

    def average(new: Array, old: Array) -> Array:
        if not jnp.issubdtype(new.dtype, jnp.floating):
            return new
        return optax.incremental_update(new, old, 1.0 - decay).astype(old.dtype)

    return EmaWeights(
        params=jax.tree.map(average, params, ema.params),
        model_state=jax.tree.map(average, model_state, ema.model_state),
    )

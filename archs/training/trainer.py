"""The trainer of a model: its split pieces, optimizer, jitted steps and initial state.

`build_trainer` is the one place that turns a config and a model into what the loop runs; the
training loop and `benchmarks/train_step.py` both call it, so what the benchmarks time is the
step that trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from archs.model_state import load_into
from archs.training import mixing, optim, parallel, steps


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the loop runs: the compiled-on-first-call steps, and what built them."""

    parts: steps.ModelParts
    tx: optax.GradientTransformation
    step_config: steps.StepConfig
    train_step: Callable[[steps.TrainState, steps.Batch], steps.TrainState]  # donates the state
    # Metric sums by prefix: 'eval/' for the weights, 'eval/ema_' for their average (EMA on).
    eval_step: Callable[[steps.TrainState, steps.Batch], dict[str, dict[str, jax.Array]]]


def build_trainer(
    config: ml_collections.ConfigDict,
    model: nnx.Module,
    *,
    schedule: optax.Schedule,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    aux_weight: float,
    augment: steps.Augment,
    mesh: Mesh,
    init_source: dict[str, np.ndarray] | None = None,
) -> tuple[Trainer, steps.TrainState, list[str]]:
    """(trainer, initial state replicated on `mesh`, the variables `init_source` did not set).

    `augment` is what the train step does to each uint8 example on device
    (`steps.device_augment`); `mean`/`std` normalise its input; `init_source` (flat model
    variables by path) starts the model from another run's weights where their paths and
    shapes match. The config's training tricks (mixing, EMA, flip evaluation, gradient
    clipping) are set here.
    """
    parts, params, model_state = steps.split_model(model)
    fresh = []
    if init_source is not None:
        fresh = load_into(init_source, params) + load_into(init_source, model_state)
    tx = optim.make_optimizer(config, schedule)
    step_config = steps.StepConfig(
        mean=mean,
        std=std,
        dtype=jnp.dtype(config.dtype),
        label_smoothing=config.label_smoothing,
        aux_weight=aux_weight,
        augment=augment,
        mix=mixing.MixConfig.from_config(config),
        ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup,
        eval_flip=config.eval_protocol == "flip",
    )
    train_step = parallel.distribute_train_step(
        lambda axis_name: steps.make_train_step(
            parts,
            tx,
            step_config,
            axis_name=axis_name,
            accum_steps=config.grad_accum_steps,
            skip_nonfinite=config.skip_nonfinite,
        ),
        mesh,
        config.parallelism,
        config.bn_mode,
    )
    weights = {"eval/": steps.make_eval_step(parts, step_config)}
    if config.ema_decay:
        weights["eval/ema_"] = steps.make_eval_step(parts, step_config, use_ema=True)
    eval_step = jax.jit(
        lambda state, batch: {prefix: step(state, batch) for prefix, step in weights.items()},
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
        out_shardings=parallel.replicated(mesh),
    )
    initial = steps.init_state(params, model_state, tx, config.seed, with_ema=config.ema_decay > 0)
    state = parallel.replicate(initial, mesh)
    return Trainer(parts, tx, step_config, train_step, eval_step), state, fresh

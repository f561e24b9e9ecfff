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

from archs.training import optim, parallel, steps
from archs.training.checkpoint import load_into


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the loop runs: the compiled-on-first-call steps, and what built them."""

    parts: steps.ModelParts
    tx: optax.GradientTransformation
    step_config: steps.StepConfig
    train_step: Callable[[steps.TrainState, steps.Batch], steps.TrainState]  # donates the state
    eval_step: Callable[[steps.TrainState, steps.Batch], dict[str, jax.Array]]


def build_trainer(
    config: ml_collections.ConfigDict,
    model: nnx.Module,
    *,
    schedule: optax.Schedule,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    aux_weight: float,
    augment_kind: str,
    mesh: Mesh,
    init_source: dict[str, np.ndarray] | None = None,
) -> tuple[Trainer, steps.TrainState, list[str]]:
    """(trainer, initial state replicated on `mesh`, the variables `init_source` did not set).

    `augment_kind` is the augmentation the train step applies on device (steps.device_augment);
    `mean`/`std` normalise its uint8 input; `init_source` (flat model variables by path) starts
    the model from another run's weights where their paths and shapes match.
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
        augment=steps.device_augment(augment_kind, config.crop_padding),
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
    eval_step = jax.jit(
        steps.make_eval_step(parts, step_config),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
        out_shardings=parallel.replicated(mesh),
    )
    state = parallel.replicate(steps.init_state(params, model_state, tx, config.seed), mesh)
    return Trainer(parts, tx, step_config, train_step, eval_step), state, fresh

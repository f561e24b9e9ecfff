"""Optax optimizers and learning-rate schedules, named as in DESIGN's config contract.

Weight decay follows each paper: coupled L2 for SGD (added to the gradient before momentum, as
PyTorch's SGD and the papers' Caffe/Torch solvers do), decoupled for AdamW, LARS's own decay
inside the trust ratio. `weight_decay_exclude_norm_bias` leaves every parameter of rank < 2
(BatchNorm scales and shifts, biases) undecayed.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The configured lr, scaled linearly with the batch size when asked (Goyal et al.)."""
    if config.lr_base_batch_size > 0:
        return config.learning_rate * config.batch_size / config.lr_base_batch_size
    return config.learning_rate


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_epochs`, then the `schedule` named in the config."""
    peak = peak_learning_rate(config)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps)
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
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _matrices_only(params: optax.Params) -> optax.Params:
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer named by `config.optimizer`, with its weight decay."""
    mask = _matrices_only if config.weight_decay_exclude_norm_bias else None
    momentum = config.momentum or None
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            optax.sgd(schedule, momentum=momentum, nesterov=config.nesterov),
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
        return optax.lars(
            schedule,
            weight_decay=config.weight_decay,
            weight_decay_mask=mask or True,
            trust_coefficient=config.lars_trust_coefficient,
            momentum=config.momentum,
            nesterov=config.nesterov,
            trust_ratio_mask=mask or True,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")

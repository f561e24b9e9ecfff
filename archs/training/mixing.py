"""Mixup and CutMix on device, inside the train step, as timm's batch mode defines them.

timm (`timm/data/mixup.py`, `Mixup(mode='batch')`): with probability `mix_prob` a batch is
mixed, else left alone; when both alphas are positive, CutMix is chosen with probability
`mix_switch_prob`, else Mixup; one lambda ~ Beta(alpha, alpha) serves the whole batch. Mixup
blends every image with its partner, `lam * x + (1 - lam) * partner`; CutMix pastes the
partner's pixels inside a box of side `int(size * sqrt(1 - lam))` centred on a uniform pixel and
clipped to the image, then corrects lambda to the kept area, `1 - box_area / image_area`. The
targets are the label-smoothed one-hots mixed with the same lambda (Zhang et al. 2018, "mixup";
Yun et al. 2019, "CutMix").

Pairing: timm pairs example i with example N-1-i of the batch it sees. Here a step sees either
the global batch (jit) or one device's shard (shard_map, pmap), so the partner is fixed on
global example indices instead: partner(i) = i XOR 1. Pairs (0, 1), (2, 3), ... stay on one
device whenever each device's batch is even, so mixing needs no communication, and the mixed
batch is the same on any number of devices (`check_pairs` enforces the even split).

The train top-1 of a mixed batch counts a prediction as correct when it is the label of weight
>= 0.5: the example's own label when lam >= 0.5, its partner's otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from archs.training.errors import ConfigError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """The config's `mixup_alpha`, `cutmix_alpha` (0 = off), `mix_prob`, `mix_switch_prob`."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, config: Any) -> MixConfig:
        return cls(config.mixup_alpha, config.cutmix_alpha, config.mix_prob, config.mix_switch_prob)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@flax.struct.dataclass
class Mix:
    """One batch's mixing: `lam`, the weight of each example's own label, and `pixel_weight`
    (H, W), the weight of its own pixels (lam everywhere for Mixup, 0 inside CutMix's box)."""

    lam: Array
    pixel_weight: Array


@flax.struct.dataclass
class MixedLabels:
    """Each example's label, its partner's, and the weight of its own (the batch's lam)."""

    own: Array
    partner: Array
    lam: Array

    def targets(self, num_classes: int, smoothing: float) -> Array:
        """(N, num_classes) soft targets: label-smoothed one-hots mixed by lam (sum 1)."""

        def smoothed(labels: Array) -> Array:
            return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)

        lam = self.lam[:, None]
        return lam * smoothed(self.own) + (1.0 - lam) * smoothed(self.partner)

    def top1_labels(self) -> Array:
        """The label of weight >= 0.5, which the train top-1 compares predictions with."""
        return jnp.where(self.lam >= 0.5, self.own, self.partner)


def unmixed(labels: Array) -> MixedLabels:
    """Plain labels as MixedLabels (lam 1): the targets are exactly the smoothed one-hots."""
    return MixedLabels(own=labels, partner=labels, lam=jnp.ones(labels.shape, jnp.float32))


def check_pairs(batch_size: int, num_devices: int) -> None:
    """Mixing pairs example i with i XOR 1 on one device: each device's batch must be even."""
    if batch_size % num_devices or (batch_size // num_devices) % 2:
        raise ConfigError(
            f"mixup/cutmix pair examples on each device: batch_size={batch_size} must split "
            f"into an even number of examples on each of {num_devices} device(s)"
        )


def partner(x: Array) -> Array:
    """x[i XOR 1] along the leading axis (which must be even)."""
    n = x.shape[0]
    if n % 2:
        raise ValueError(f"mixup/cutmix need an even batch on each device, got {n} examples")
    return x.reshape((n // 2, 2, *x.shape[1:]))[:, ::-1].reshape(x.shape)


def cutmix_box(key: Array, lam: Array, height: int, width: int) -> tuple[Array, Array]:
    """timm's CutMix box for `lam`: (H, W) mask of the pasted pixels, and the corrected lam."""
    y_key, x_key = jax.random.split(key)
    ratio = jnp.sqrt(1.0 - lam)

    def span(k: Array, size: int) -> tuple[Array, Array]:
        cut = jnp.floor(size * ratio).astype(jnp.int32)
        center = jax.random.randint(k, (), 0, size)
        return jnp.clip(center - cut // 2, 0, size), jnp.clip(center + cut // 2, 0, size)

    (y0, y1), (x0, x1) = span(y_key, height), span(x_key, width)
    rows, cols = jnp.arange(height), jnp.arange(width)
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
    return inside, 1.0 - area / (height * width)


def sample_mix(key: Array, cfg: MixConfig, height: int, width: int) -> Mix:
    """The mixing of one batch, drawn from `key` (the same key on every device)."""
    apply_key, switch_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 5)
    one = jnp.ones((), jnp.float32)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(switch_key) < cfg.switch_prob
    else:
        use_cutmix = jnp.bool_(cfg.cutmix_alpha > 0)
    mixup_lam = (
        jax.random.beta(mixup_key, cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha else one
    )
    cutmix_lam = (
        jax.random.beta(cutmix_key, cfg.cutmix_alpha, cfg.cutmix_alpha) if cfg.cutmix_alpha else one
    )
    applied = jax.random.uniform(apply_key) < cfg.prob
    cutmix = applied & use_cutmix
    lam = jnp.where(applied, jnp.where(use_cutmix, cutmix_lam, mixup_lam), one)
    inside, box_lam = cutmix_box(box_key, lam, height, width)
    pixel_weight = jnp.where(cutmix, jnp.where(inside, 0.0, 1.0), lam)
    return Mix(lam=jnp.where(cutmix, box_lam, lam), pixel_weight=pixel_weight)


def mix_batch(images: Array, labels: Array, mix: Mix) -> tuple[Array, MixedLabels]:
    """Mix (N, H, W, C) images (float32 out) and their labels with their partners."""
    x = images.astype(jnp.float32)
    w = mix.pixel_weight[None, :, :, None]
    mixed = w * x + (1.0 - w) * partner(x)
    lam = jnp.broadcast_to(mix.lam, labels.shape)
    return mixed, MixedLabels(own=labels, partner=partner(labels), lam=lam)

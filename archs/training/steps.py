"""Pure train and eval steps over a flat train state, ready for `jax.jit` with donation.

The model lives as `nnx.split` pieces: a graph definition (one per mode, train and eval), the
parameters, the other variables (BatchNorm statistics) and the RNG streams (reseeded every step,
so not part of the state). A step merges them, runs the model, and splits again. Augmentation
and normalisation of the uint8 batch happen here, on device, keyed by (seed, step). Train
metrics accumulate on device in the state; the loop reads them only at log steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

Array = jax.Array
Batch = dict[str, Array]

TRAIN_METRICS = ("loss_sum", "correct", "count")
EVAL_METRICS = ("loss_sum", "top1", "top5", "count")


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as one pytree (the data position is `step`)."""

    step: Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    rng: Array  # raw uint32 key data, so checkpoints hold plain arrays
    metrics: dict[str, Array]  # train sums since the last log step


def zero_metrics(names: tuple[str, ...] = TRAIN_METRICS) -> dict[str, Array]:
    return {k: jnp.zeros((), jnp.float32) for k in names}


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """A model taken apart by `nnx.split`, in train and eval mode."""

    train_def: nnx.GraphDef
    eval_def: nnx.GraphDef
    rng_state: nnx.State
    rng_streams: tuple[str, ...]

    def merge(self, state: TrainState, train: bool) -> nnx.Module:
        # A fresh copy of the RNG state, so the merged module's variables belong to this trace.
        rng_state = jax.tree.map(lambda x: x, self.rng_state)
        graphdef = self.train_def if train else self.eval_def
        return nnx.merge(graphdef, state.params, rng_state, state.model_state)


def split_model(model: nnx.Module) -> tuple[ModelParts, nnx.State, nnx.State]:
    """(parts, params, model_state) of a model; leaves the model in eval mode."""
    model.train()
    train_def, params, rng_state, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
    model.eval()
    eval_def = nnx.graphdef(model)
    streams = {s.key.tag for _, s in nnx.iter_graph(model) if isinstance(s, nnx.RngStream)}
    return ModelParts(train_def, eval_def, rng_state, tuple(sorted(streams))), params, model_state


def cross_entropy(logits: Array, labels: Array, smoothing: float) -> Array:
    """Per-example softmax cross-entropy against label-smoothed one-hot targets, in float32."""
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def normalize(images: Array, mean: tuple, std: tuple, dtype: Any) -> Array:
    """uint8 images in [0, 255] -> (x / 255 - mean) / std in the compute dtype."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def random_flip(images: Array, key: Array) -> Array:
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_pad_crop_flip(images: Array, key: Array, pad: int) -> Array:
    """CIFAR augmentation (He et al.): zero-pad by `pad`, random crop back, random h-flip."""
    n, h, w, c = images.shape
    crop_key, y_key, x_key = jax.random.split(key, 3)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ys = jax.random.randint(y_key, (n,), 0, 2 * pad + 1)
    xs = jax.random.randint(x_key, (n,), 0, 2 * pad + 1)
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
        padded, ys, xs
    )
    return random_flip(crops, crop_key)


def device_augment(kind: str, pad: int) -> Callable[[Array, Array], Array]:
    """The on-device augmentation for `augment=kind`; host pipelines pass 'none' here."""
    if kind == "cifar":
        return lambda images, key: random_pad_crop_flip(images, key, pad)
    if kind == "flip":
        return random_flip
    return lambda images, key: images


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the steps need beyond the state: preprocessing, loss weights, optimizer."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Any
    label_smoothing: float
    aux_weight: float
    augment: Callable[[Array, Array], Array]


def make_train_step(
    parts: ModelParts, tx: optax.GradientTransformation, cfg: StepConfig
) -> Callable[[TrainState, Batch], TrainState]:
    """A pure (state, batch) -> state; batch holds uint8 `image` (N,H,W,3) and int `label`."""

    def train_step(state: TrainState, batch: Batch) -> TrainState:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        augment_key, dropout_key = jax.random.split(key)
        images = normalize(cfg.augment(batch["image"], augment_key), cfg.mean, cfg.std, cfg.dtype)
        labels = batch["label"]
        model = parts.merge(state, train=True)
        if parts.rng_streams:
            nnx.reseed(model, **dict.fromkeys(parts.rng_streams, dropout_key))

        def loss_fn(model: nnx.Module) -> tuple[Array, Array]:
            logits, aux = model(images, return_aux=True)
            loss = cross_entropy(logits, labels, cfg.label_smoothing).mean()
            for extra in aux:
                loss += cfg.aux_weight * cross_entropy(extra, labels, cfg.label_smoothing).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        _, _, _, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        n = labels.shape[0]
        metrics = {
            "loss_sum": state.metrics["loss_sum"] + loss * n,
            "correct": state.metrics["correct"]
            + jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            "count": state.metrics["count"] + n,
        }
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            metrics=metrics,
        )

    return train_step


def make_eval_step(
    parts: ModelParts, cfg: StepConfig
) -> Callable[[TrainState, Batch], dict[str, Array]]:
    """A pure (state, batch) -> metric sums over the unmasked examples (plain cross-entropy).

    `image` is (N,H,W,3), or (N,V,H,W,3) for multi-view protocols, whose softmax
    probabilities are averaged over the V views; `mask` is 0 for padding.
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, Array]:
        images, labels = batch["image"], batch["label"]
        n = images.shape[0]
        views = images.shape[1] if images.ndim == 5 else 1
        x = normalize(images.reshape((n * views, *images.shape[-3:])), cfg.mean, cfg.std, cfg.dtype)
        logits = parts.merge(state, train=False)(x).astype(jnp.float32)
        probs = jax.nn.softmax(logits).reshape((n, views, -1)).mean(axis=1)
        log_probs = jnp.log(jnp.maximum(probs, 1e-30))
        mask = batch["mask"].astype(jnp.float32)
        loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        _, top = jax.lax.top_k(probs, min(5, probs.shape[-1]))
        hits = top == labels[:, None]
        return {
            "loss_sum": jnp.sum(loss * mask),
            "top1": jnp.sum(hits[:, 0] * mask),
            "top5": jnp.sum(jnp.any(hits, axis=-1) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step

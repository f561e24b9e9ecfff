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

TRAIN_METRICS = ("loss_sum", "correct", "count", "skipped", "first_nonfinite")
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


def init_state(
    params: nnx.State, model_state: nnx.State, tx: optax.GradientTransformation, seed: int
) -> TrainState:
    """The state at step 0 (on the host's default device; place it with parallel.replicate)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
        metrics=zero_metrics(),
    )


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """A model taken apart by `nnx.split`, in train and eval mode."""

    train_def: nnx.GraphDef
    eval_def: nnx.GraphDef
    rng_state: nnx.State
    rng_streams: tuple[str, ...]

    def merge(self, params: nnx.State, model_state: nnx.State, train: bool) -> nnx.Module:
        # Fresh copies: the module updates its variables (BatchNorm statistics, RNG counts) in
        # place, which must neither touch the caller's state nor outlive this trace.
        params, rng_state, model_state = jax.tree.map(
            lambda x: x, (params, self.rng_state, model_state)
        )
        graphdef = self.train_def if train else self.eval_def
        return nnx.merge(graphdef, params, rng_state, model_state)


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


def flip(image: Array, key: Array) -> Array:
    """One HWC image mirrored left-right with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def pad_crop_flip(image: Array, key: Array, pad: int) -> Array:
    """CIFAR augmentation of one HWC image (He et al.): zero-pad by `pad`, random crop, flip."""
    h, w, c = image.shape
    flip_key, y_key, x_key = jax.random.split(key, 3)
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y = jax.random.randint(y_key, (), 0, 2 * pad + 1)
    x = jax.random.randint(x_key, (), 0, 2 * pad + 1)
    return flip(jax.lax.dynamic_slice(padded, (y, x, 0), (h, w, c)), flip_key)


Augment = Callable[[Array, Array], Array]


def device_augment(kind: str, pad: int) -> Augment:
    """The on-device augmentation of one example for `augment=kind` ('none' when tf.data did it)."""
    if kind == "cifar":
        return lambda image, key: pad_crop_flip(image, key, pad)
    if kind == "flip":
        return flip
    return lambda image, key: image


def augment_batch(augment: Augment, images: Array, key: Array, first_index: Array | int) -> Array:
    """Example i of the global batch is augmented with fold_in(key, i), so the result does not
    depend on how the batch is split over devices or micro-batches."""
    indices = first_index + jnp.arange(images.shape[0])
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    return jax.vmap(augment)(images, keys)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the steps need beyond the state: preprocessing, loss weights, optimizer."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Any
    label_smoothing: float
    aux_weight: float
    augment: Augment


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def _all_finite(tree: Any) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _advance_schedules(new: optax.OptState, old: optax.OptState) -> optax.OptState:
    """`old` with the learning-rate schedules' step counts of `new`: a skipped update still
    advances the schedule, so the lr in use stays schedule(state.step), the logged one."""
    return jax.tree.map(
        lambda n, o: n if isinstance(n, optax.ScaleByScheduleState) else o,
        new,
        old,
        is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState),
    )


def make_train_step(
    parts: ModelParts,
    tx: optax.GradientTransformation,
    cfg: StepConfig,
    *,
    axis_name: str | None = None,
    accum_steps: int = 1,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Batch], TrainState]:
    """A pure (state, batch) -> state; batch holds uint8 `image` (N,H,W,3) and int `label`.

    With `axis_name` the step sees one device's shard (under `jax.shard_map` or `jax.pmap`):
    BatchNorm statistics are per device, gradients and running statistics are averaged over the
    axis (averaging the running statistics every step equals averaging them before evaluation,
    since their update is linear), metrics summed. With `accum_steps` > 1 the (local) batch is
    cut into that many micro-batches whose gradients are averaged before one update; BatchNorm
    uses each micro-batch's statistics and updates its running statistics once per micro-batch.
    A non-finite loss, gradient or BatchNorm statistic is recorded in
    `metrics['first_nonfinite']` (the 1-based step);
    with `skip_nonfinite` that update is dropped and counted in `metrics['skipped']` (the
    learning-rate schedule still advances, as `state.step` does).
    """

    def loss_and_grads(params, model_state, images, labels, dropout_key):
        model = parts.merge(params, model_state, train=True)
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
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return grads, model_state, loss, correct

    def accumulate(state: TrainState, images: Array, labels: Array, dropout_key: Array):
        if accum_steps == 1:
            return loss_and_grads(state.params, state.model_state, images, labels, dropout_key)
        xs, ys = (a.reshape((accum_steps, -1, *a.shape[1:])) for a in (images, labels))
        # The first micro-batch outside the scan, so that the carry is per device from the start.
        key = jax.random.fold_in(dropout_key, 0)
        first = loss_and_grads(state.params, state.model_state, xs[0], ys[0], key)

        def body(carry, micro):
            # The parameters ride in the carry: nnx refuses variables from an outer trace.
            params, grads, model_state, loss, correct = carry
            i, x, y = micro
            key = jax.random.fold_in(dropout_key, i)
            g, model_state, micro_loss, c = loss_and_grads(params, model_state, x, y, key)
            return (params, _tree_add(grads, g), model_state, loss + micro_loss, correct + c), None

        rest = (jnp.arange(1, accum_steps), xs[1:], ys[1:])
        carry, _ = jax.lax.scan(body, (state.params, *first), rest)
        _, grads, model_state, loss, correct = carry
        scale = 1.0 / accum_steps
        return jax.tree.map(lambda g: g * scale, grads), model_state, loss * scale, correct

    def train_step(state: TrainState, batch: Batch) -> TrainState:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        augment_key, dropout_key = jax.random.split(key)
        labels = batch["label"]
        n = labels.shape[0]
        first_index = 0
        if axis_name is not None:
            device = jax.lax.axis_index(axis_name)
            first_index = device * n
            dropout_key = jax.random.fold_in(dropout_key, device)
        augmented = augment_batch(cfg.augment, batch["image"], augment_key, first_index)
        images = normalize(augmented, cfg.mean, cfg.std, cfg.dtype)
        grads, model_state, loss, correct = accumulate(state, images, labels, dropout_key)
        if axis_name is not None:
            grads, model_state, loss = jax.lax.pmean((grads, model_state, loss), axis_name)
            correct = jax.lax.psum(correct, axis_name)
            n = n * jax.lax.axis_size(axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & _all_finite((grads, model_state))
        applied = finite if skip_nonfinite else jnp.bool_(True)
        if skip_nonfinite:
            params, opt_state, model_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (params, opt_state, model_state),
                (state.params, _advance_schedules(opt_state, state.opt_state), state.model_state),
            )
        m = state.metrics
        metrics = {
            "loss_sum": m["loss_sum"] + jnp.where(applied, loss * n, 0.0),
            "correct": m["correct"] + jnp.where(applied, correct, 0.0),
            "count": m["count"] + jnp.where(applied, n, 0.0),
            "skipped": m["skipped"] + jnp.where(applied, 0.0, 1.0),
            "first_nonfinite": jnp.where(
                finite | (m["first_nonfinite"] > 0), m["first_nonfinite"], state.step + 1.0
            ),
        }
        return state.replace(
            step=state.step + 1,
            params=params,
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
        logits = parts.merge(state.params, state.model_state, train=False)(x).astype(jnp.float32)
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

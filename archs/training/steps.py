"""Pure train and eval steps over a flat train state, ready for `jax.jit` with donation.

The model lives as `nnx.split` pieces: a graph definition (one per mode, train and eval), the
parameters, the other variables (BatchNorm statistics) and the RNG streams (reseeded every step,
so not part of the state). A step merges them, runs the model, and splits again. Augmentation
(RandAugment included), Mixup/CutMix and normalisation of the uint8 batch happen here, on
device, keyed by (seed, step). The loss takes soft targets. With `ema_decay` the state carries
an average of the weights (ema.py), which the eval step can evaluate instead of the raw ones.
Train metrics accumulate on device in the state; the loop reads them only at log steps.
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

from archs.training import ema, mixing
from archs.training.randaugment import make_randaugment

Array = jax.Array
Batch = dict[str, Array]

# Streams of a step's key: split(key) gives 0 (augmentation) and 1 (dropout), 2 is mixing.
MIX_STREAM = 2
# Stream of an example's augmentation key that RandAugment uses (crop and flip use 0 to 2).
RANDAUGMENT_STREAM = 3

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
    ema: ema.EmaWeights | None = None  # the weights' moving average; None when off


def zero_metrics(names: tuple[str, ...] = TRAIN_METRICS) -> dict[str, Array]:
    return {k: jnp.zeros((), jnp.float32) for k in names}


def init_state(
    params: nnx.State,
    model_state: nnx.State,
    tx: optax.GradientTransformation,
    seed: int,
    *,
    with_ema: bool = False,
) -> TrainState:
    """The state at step 0 (on the host's default device; place it with parallel.replicate);
    `with_ema` (ema_decay > 0) starts the average as a copy of the weights."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
        metrics=zero_metrics(),
        ema=ema.init(params, model_state) if with_ema else None,
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


def soft_cross_entropy(logits: Array, targets: Array) -> Array:
    """Per-example softmax cross-entropy against (N, C) soft targets, in float32."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def cross_entropy(logits: Array, labels: Array, smoothing: float) -> Array:
    """Per-example softmax cross-entropy against label-smoothed one-hot targets, in float32."""
    return soft_cross_entropy(logits, mixing.unmixed(labels).targets(logits.shape[-1], smoothing))


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


def _base_augment(kind: str, pad: int) -> Augment:
    if kind == "cifar":
        return lambda image, key: pad_crop_flip(image, key, pad)
    if kind == "flip":
        return flip
    return lambda image, key: image


def device_augment(kind: str, pad: int, randaugment: str = "") -> Augment:
    """The on-device augmentation of one example for `augment=kind` ('none' when tf.data did
    it), followed by RandAugment when `randaugment` is 'N,M' ('' when off or done by tf.data)."""
    base = _base_augment(kind, pad)
    rand = make_randaugment(randaugment)
    if rand is None:
        return base

    def augment(image: Array, key: Array) -> Array:
        return rand(base(image, key), jax.random.fold_in(key, RANDAUGMENT_STREAM))

    return augment


def augment_batch(augment: Augment, images: Array, key: Array, first_index: Array | int) -> Array:
    """Example i of the global batch is augmented with fold_in(key, i), so the result does not
    depend on how the batch is split over devices or micro-batches."""
    indices = first_index + jnp.arange(images.shape[0])
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    return jax.vmap(augment)(images, keys)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the steps need beyond the state: preprocessing, loss weights, optimizer, tricks."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Any
    label_smoothing: float
    aux_weight: float
    augment: Augment
    mix: mixing.MixConfig = dataclasses.field(default_factory=mixing.MixConfig)  # off
    ema_decay: float = 0.0  # > 0: update TrainState.ema (which init_state must have made)
    ema_warmup: bool = False
    eval_flip: bool = False  # eval: average the logits of each image and its mirror


def prepare_batch(
    cfg: StepConfig, batch: Batch, key: Array, first_index: Array | int
) -> tuple[Array, mixing.MixedLabels]:
    """The model's input and labels from a uint8 batch whose first example has global index
    `first_index`: augmented (per example), mixed (per batch) and normalised. `key` is the
    step's key, the same on every device, so the result does not depend on the device count."""
    augment_key = jax.random.split(key)[0]
    augmented = augment_batch(cfg.augment, batch["image"], augment_key, first_index)
    if cfg.mix.enabled:
        mix_key = jax.random.fold_in(key, MIX_STREAM)
        mix = mixing.sample_mix(mix_key, cfg.mix, *augmented.shape[1:3])
        augmented, labels = mixing.mix_batch(augmented, batch["label"], mix)
    else:
        labels = mixing.unmixed(batch["label"])
    return normalize(augmented, cfg.mean, cfg.std, cfg.dtype), labels


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

    def loss_and_grads(params, model_state, images, labels: mixing.MixedLabels, dropout_key):
        model = parts.merge(params, model_state, train=True)
        if parts.rng_streams:
            nnx.reseed(model, **dict.fromkeys(parts.rng_streams, dropout_key))

        def loss_fn(model: nnx.Module) -> tuple[Array, Array]:
            logits, aux = model(images, return_aux=True)
            targets = labels.targets(logits.shape[-1], cfg.label_smoothing)
            loss = soft_cross_entropy(logits, targets).mean()
            for extra in aux:
                loss += cfg.aux_weight * soft_cross_entropy(extra, targets).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        _, _, _, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels.top1_labels()).astype(jnp.float32)
        return grads, model_state, loss, correct

    def accumulate(state: TrainState, images: Array, labels: mixing.MixedLabels, dropout_key):
        if accum_steps == 1:
            return loss_and_grads(state.params, state.model_state, images, labels, dropout_key)
        xs, ys = jax.tree.map(
            lambda a: a.reshape((accum_steps, -1, *a.shape[1:])), (images, labels)
        )
        # The first micro-batch outside the scan, so that the carry is per device from the start.
        key = jax.random.fold_in(dropout_key, 0)
        y0 = jax.tree.map(lambda a: a[0], ys)
        first = loss_and_grads(state.params, state.model_state, xs[0], y0, key)

        def body(carry, micro):
            # The parameters ride in the carry: nnx refuses variables from an outer trace.
            params, grads, model_state, loss, correct = carry
            i, x, y = micro
            key = jax.random.fold_in(dropout_key, i)
            g, model_state, micro_loss, c = loss_and_grads(params, model_state, x, y, key)
            return (params, _tree_add(grads, g), model_state, loss + micro_loss, correct + c), None

        rest = (jnp.arange(1, accum_steps), xs[1:], jax.tree.map(lambda a: a[1:], ys))
        carry, _ = jax.lax.scan(body, (state.params, *first), rest)
        _, grads, model_state, loss, correct = carry
        scale = 1.0 / accum_steps
        return jax.tree.map(lambda g: g * scale, grads), model_state, loss * scale, correct

    def train_step(state: TrainState, batch: Batch) -> TrainState:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        dropout_key = jax.random.split(key)[1]
        n = batch["label"].shape[0]
        first_index = 0
        if axis_name is not None:
            device = jax.lax.axis_index(axis_name)
            first_index = device * n
            dropout_key = jax.random.fold_in(dropout_key, device)
        images, labels = prepare_batch(cfg, batch, key, first_index)
        grads, model_state, loss, correct = accumulate(state, images, labels, dropout_key)
        if axis_name is not None:
            grads, model_state, loss = jax.lax.pmean((grads, model_state, loss), axis_name)
            correct = jax.lax.psum(correct, axis_name)
            n = n * jax.lax.axis_size(axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        averaged = state.ema
        if cfg.ema_decay > 0:
            if state.ema is None:
                raise ValueError("ema_decay > 0 needs a state made by init_state(with_ema=True)")
            decay = ema.decay_at(state.step, cfg.ema_decay, cfg.ema_warmup)
            averaged = ema.update(state.ema, params, model_state, decay)
        finite = jnp.isfinite(loss) & _all_finite((grads, model_state))
        applied = finite if skip_nonfinite else jnp.bool_(True)
        if skip_nonfinite:
            params, opt_state, model_state, averaged = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (params, opt_state, model_state, averaged),
                (
                    state.params,
                    _advance_schedules(opt_state, state.opt_state),
                    state.model_state,
                    state.ema,
                ),
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
            ema=averaged,
        )

    return train_step


def make_eval_step(
    parts: ModelParts, cfg: StepConfig, *, use_ema: bool = False
) -> Callable[[TrainState, Batch], dict[str, Array]]:
    """A pure (state, batch) -> metric sums over the unmasked examples (plain cross-entropy),
    of the raw weights or, with `use_ema`, of their moving average (`state.ema`).

    `image` is (N,H,W,3), or (N,V,H,W,3) for multi-view protocols, whose softmax
    probabilities are averaged over the V views; `mask` is 0 for padding. With
    `cfg.eval_flip` ('flip' protocol) each (N,H,W,3) image is also run mirrored and the two
    logits are averaged.
    """

    def eval_step(state: TrainState, batch: Batch) -> dict[str, Array]:
        images, labels = batch["image"], batch["label"]
        weights = state.ema if use_ema else state
        n = images.shape[0]
        if cfg.eval_flip:
            images = jnp.stack([images, images[:, :, ::-1]], axis=1)
        views = images.shape[1] if images.ndim == 5 else 1
        x = normalize(images.reshape((n * views, *images.shape[-3:])), cfg.mean, cfg.std, cfg.dtype)
        model = parts.merge(weights.params, weights.model_state, train=False)
        logits = model(x).astype(jnp.float32).reshape((n, views, -1))
        if cfg.eval_flip:
            log_probs = jax.nn.log_softmax(logits.mean(axis=1))
            probs = jnp.exp(log_probs)
        else:
            probs = jax.nn.softmax(logits).mean(axis=1)
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

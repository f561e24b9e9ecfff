"""A run checked before anything happens: `plan_run(config, workdir)` and the plan it prints.

`plan_run` runs every check that can fail on the input (config values, the model and its
keywords, devices, the dataset, `init_from`, the workdir) without writing a file or compiling,
raising a one-line ConfigError for the first problem. The `Plan` it returns holds what the run
needs to know up front; `describe` is the block `train.py --check` prints and every run shows
before its first step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import archs
from archs import fast_conv, layers
from archs.cli_errors import first_line
from archs.model_state import flat_state, head_keys, read_model_state, saved_steps
from archs.training import data, mixing, normalization, optim, parallel, steps
from archs.training.checkpoint import layout_difference
from archs.training.config import check_config
from archs.training.errors import ConfigError
from archs.training.workdir import check_free

# A workdir holds one experiment: these may not change when it is run again.
IDENTITY_KEYS = ("model", "model_kwargs", "dataset")
# Keys that may change between launches without being worth a warning.
UNREMARKABLE_KEYS = ("eval_only",)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked run: everything known before touching the workdir or compiling."""

    config: ml_collections.ConfigDict
    workdir: str
    info: archs.ModelInfo
    source: data.Source
    preprocess: data.Preprocess
    num_classes: int
    num_params: int
    eval_batch_size: int
    init_source: dict[str, np.ndarray] | None  # init_from's model variables, flat by path
    init_fresh: tuple[tuple[str, ...], tuple[str, ...]]  # (head, others) init_from leaves new
    normalization: str  # where config.input_mean/input_std come from
    train_examples: int | None  # None: evaluation only, or a dataset still to be downloaded
    eval_examples: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    schedule: optax.Schedule | None
    saved_steps: tuple[int, ...]  # the workdir's checkpoints
    done: dict[str, Any] | None  # the workdir's done.json
    changed: tuple[str, ...]  # settings that differ from the workdir's config.json: 'k: a -> b'

    @property
    def optimizer_schedule(self) -> optax.Schedule:
        """The schedule the optimizer is built with; evaluation only builds it for the train
        state's layout (what a checkpoint restores into), so any schedule does."""
        return self.schedule or optax.constant_schedule(0.0)

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")

    @property
    def resume_step(self) -> int:
        return self.saved_steps[-1] if self.saved_steps else 0

    @property
    def complete(self) -> bool:
        """The workdir already holds this run, trained to the end."""
        return (
            self.done is not None
            and self.total_steps is not None
            and (self.resume_step >= self.total_steps)
        )

    def create_model(self) -> nnx.Module:
        return build_model(self.config, self.num_classes)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The config's model, with its keywords, the convolutions that are fast on this backend,
    and its BatchNorm groups (`bn_group_size`)."""
    model = archs.create_model(
        config.model,
        num_classes=num_classes,
        rngs=nnx.Rngs(config.seed),
        dtype=jnp.dtype(config.dtype),
        conv=fast_conv.for_backend(jax.default_backend()),
        **config.model_kwargs.to_dict(),
    )
    if config.bn_group_size:
        layers.set_bn_group_size(model, config.bn_group_size)
    return model


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _changed_settings(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
    """The workdir's earlier config against this one: identity keys must match; the other
    differences are returned as 'key: old -> new'."""
    previous = _read_json(os.path.join(workdir, "config.json"))
    if previous is None:
        return ()
    current = json.loads(config.to_json())
    for key in IDENTITY_KEYS:
        if previous.get(key) != current[key]:
            raise ConfigError(
                f"workdir {workdir!r} holds a run with {key}={previous.get(key)!r}, not "
                f"{current[key]!r}; use another workdir"
            )
    return tuple(
        f"{k}: {previous.get(k)!r} -> {current[k]!r}"
        for k in sorted(current)
        if k not in UNREMARKABLE_KEYS and previous.get(k) != current[k]
    )


def _normalization(
    config: ml_collections.ConfigDict,
    workdir: str,
    source: data.Source,
    preprocess: data.Preprocess,
) -> tuple[ml_collections.ConfigDict, str]:
    """A copy of `config` with `input_mean`/`input_std` resolved, and where they come from:
    the config, the run's first launch (its config.json), the dataset's known constants, or
    computed from the training split."""
    if config.input_mean:
        return config, "as configured"
    previous = _read_json(os.path.join(workdir, "config.json")) or {}
    if previous.get("input_mean"):
        mean, std, origin = previous["input_mean"], previous["input_std"], "as first launched"
    elif known := normalization.known_stats(config.dataset):
        (mean, std), origin = known
    else:
        mean, std = normalization.computed_stats(source, preprocess)
        origin = f"computed from {config.train_split}"
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.input_mean, resolved.input_std = tuple(mean), tuple(std)
    return resolved, origin


def _check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file, not a directory")
    check_free(workdir)


def _read_init_from(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise ConfigError(f"init_from {path!r} does not exist")
    try:
        return read_model_state(path)
    except Exception as e:  # orbax raises many types for a directory that is not a checkpoint
        raise ConfigError(
            f"init_from {path!r} is not a readable checkpoint: {first_line(e)}"
        ) from None


def _fresh_after_init_from(
    config: ml_collections.ConfigDict, num_classes: int, source: dict, abstract: nnx.Module
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the head's variables, the others) that `init_from` leaves as initialised: those it
    does not hold with the same shape. The head (`model_state.head_keys`) is fresh when the
    number of classes changes; anything else fresh is a sign of another architecture."""
    state = nnx.state(abstract, nnx.Not(nnx.RngState))
    wanted = {k: v.shape for k, v in flat_state(state).items()}
    fresh = sorted(k for k, shape in wanted.items() if np.shape(source.get(k)) != shape)
    if len(fresh) == len(wanted):
        raise ConfigError(f"init_from {config.init_from!r} matches no variable of {config.model}")
    wider = nnx.eval_shape(lambda: build_model(config, num_classes + 1))
    head = head_keys(abstract, wider)
    return tuple(k for k in fresh if k in head), tuple(k for k in fresh if k not in head)


def plan_run(config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Check the input; raise ConfigError (exit 2) naming the first problem."""
    check_config(config, devices=jax.device_count())
    try:
        info = archs.model_info(config.model)
        archs.registry.check_overrides(config.model, config.model_kwargs.to_dict())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    parallel.check_batch_size("batch_size", config.batch_size, config.grad_accum_steps)
    if mixing.MixConfig.from_config(config).enabled:
        mixing.check_pairs(config.batch_size, jax.device_count())
    eval_batch_size = config.eval_batch_size or config.batch_size
    parallel.check_batch_size("eval_batch_size", eval_batch_size)
    _check_workdir(workdir)
    source = data.open_source(config)
    init_source = _read_init_from(config.init_from) if config.init_from else None
    num_classes = config.num_classes or source.num_classes

    try:
        abstract = nnx.eval_shape(lambda: build_model(config, num_classes))
    except ValueError as e:
        raise ConfigError(first_line(e)) from None
    fresh = ((), ())
    if init_source is not None:
        fresh = _fresh_after_init_from(config, num_classes, init_source, abstract)
    preprocess = data.make_preprocess(config, info, source)
    config, normalization_source = _normalization(config, workdir, source, preprocess)
    # config.json says how many classes and what image size the model was built with (0 meant
    # the dataset's classes and the model's own size).
    resolved = {"num_classes": num_classes, "image_size": preprocess.image_size}
    config = ml_collections.ConfigDict({**config.to_dict(), **resolved})
    changed = _changed_settings(config, workdir)
    checkpoints = tuple(saved_steps(os.path.join(workdir, "checkpoints")))
    if config.eval_only and not checkpoints and not config.init_from:
        raise ConfigError(f"eval_only: no checkpoint in {workdir!r} and no init_from")

    prepared = source.is_folder or source.builder.is_prepared()
    train_examples = steps_per_epoch = total = schedule = None
    if not config.eval_only and prepared:
        train_examples = data.split_size(source, source.train_split)
        steps_per_epoch = train_examples // config.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(
                f"batch_size={config.batch_size} is larger than the training set "
                f"({train_examples} examples)"
            )
        total = config.num_train_steps or max(round(config.num_epochs * steps_per_epoch), 1)
        schedule = optim.learning_rate_schedule(config, steps_per_epoch, total)
    plan = Plan(
        config=config,
        workdir=workdir,
        info=info,
        source=source,
        preprocess=preprocess,
        num_classes=num_classes,
        num_params=sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param))),
        eval_batch_size=eval_batch_size,
        init_source=init_source,
        init_fresh=fresh,
        normalization=normalization_source,
        train_examples=train_examples,
        eval_examples=data.split_size(source, source.eval_split) if prepared else None,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule=schedule,
        saved_steps=checkpoints,
        done=_read_json(os.path.join(workdir, "done.json")),
        changed=changed,
    )
    if checkpoints:
        _check_layout(plan, abstract)
    return plan


def _check_layout(plan: Plan, abstract: nnx.Module) -> None:
    """The latest checkpoint holds the train state this config builds (a damaged one is left
    to the restore, which moves it aside)."""
    c = plan.config
    _, params, model_state = steps.split_model(abstract)
    tx = optim.make_optimizer(c, plan.optimizer_schedule)
    like = jax.eval_shape(
        lambda p, m: steps.init_state(p, m, tx, c.seed, with_ema=c.ema_decay > 0),
        params,
        model_state,
    )
    try:
        difference = layout_difference(plan.checkpoint_dir, plan.resume_step, like)
    except Exception:  # unreadable metadata: a damaged checkpoint, for the restore to handle
        return
    if difference:
        raise ConfigError(
            f"the checkpoint of step {plan.resume_step} in {plan.checkpoint_dir!r} does not fit "
            f"this config ({difference}): a run cannot change its optimizer, ema_decay or "
            "grad_clip_norm; use another workdir"
        )


def _every(steps: int, default: str) -> str:
    return f"every {steps:,} steps" if steps else default


def _optimizer_text(c: ml_collections.ConfigDict) -> str:
    text = c.optimizer
    if c.optimizer in ("sgd", "lars") and c.momentum:
        text += f" momentum {c.momentum:g}" + (" nesterov" if c.nesterov else "")
    peak = optim.peak_learning_rate(c)
    text += f", lr {peak:g}"
    if c.lr_base_batch_size:
        text += f" ({c.learning_rate:g} x {c.batch_size}/{c.lr_base_batch_size})"
    text += f", {c.schedule} schedule"
    if c.schedule == "step":
        text += f" (x{c.lr_decay_factor:g} at " + ", ".join(f"{b:.0%}" for b in c.lr_boundaries)
        text += ")"
    if c.warmup_epochs:
        text += f", warmup {c.warmup_epochs:g} epochs"
    text += f", weight decay {c.weight_decay:g}"
    if c.label_smoothing:
        text += f", label smoothing {c.label_smoothing:g}"
    return text


def _triple(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _tricks_text(c: ml_collections.ConfigDict) -> str:
    """The training knobs that are on (they are all off by default)."""
    knobs = [
        (c.ema_decay, f"EMA {c.ema_decay}" + (" with warmup" if c.ema_warmup else "")),
        (c.mixup_alpha, f"mixup {c.mixup_alpha}"),
        (c.cutmix_alpha, f"CutMix {c.cutmix_alpha}"),
        (c.randaugment, f"RandAugment {c.randaugment}"),
        (c.grad_clip_norm, f"gradient clip {c.grad_clip_norm}"),
    ]
    on = [text for value, text in knobs if value]
    if mixing.MixConfig.from_config(c).enabled:
        on.append(f"mix_prob {c.mix_prob}")
    return ", ".join(on)


def describe(plan: Plan) -> str:
    """The plan as the block printed before a run's first step (and by `train.py --check`)."""
    c = plan.config
    kwargs = c.model_kwargs.to_dict()
    model = f"{c.model} ({plan.num_params:,} parameters"
    model += (", " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else "") + ")"
    devices = jax.device_count()
    size = plan.preprocess.image_size
    if plan.train_examples is None:
        counts = "not prepared yet: it will be downloaded" if not c.eval_only else "evaluation"
    else:
        counts = f"{plan.train_examples:,} train / {plan.eval_examples:,} {c.eval_split} examples"
    lines = [
        f"run      {model} on {c.dataset}",
        f"data     {counts}; {size}x{size}, {plan.source.pipeline} pipeline, augment {c.augment}",
        f"input    mean {_triple(c.input_mean)}, std {_triple(c.input_std)} ({plan.normalization})",
        f"devices  {devices} x {jax.devices()[0].device_kind} ({jax.process_count()} process"
        f"{'es' if jax.process_count() > 1 else ''}), {c.parallelism}, BatchNorm {c.bn_mode}",
        f"batch    {c.batch_size:,} global, {c.batch_size // devices:,} per device"
        + (f", {c.grad_accum_steps} micro-batches" if c.grad_accum_steps > 1 else ""),
    ]
    if plan.total_steps is not None:
        epochs = plan.total_steps / plan.steps_per_epoch
        lines.append(
            f"length   {plan.total_steps:,} steps = {epochs:.4g} epochs of "
            f"{plan.steps_per_epoch:,} steps"
        )
    if c.init_from:
        head, others = plan.init_fresh
        start = f"init     {c.init_from}: " + (
            "a new head (" + ", ".join(head) + ")" if head else "every variable"
        )
        if others:
            start += "; also new, absent or of another shape there: " + ", ".join(others)
        lines.append(start)
    if not c.eval_only:
        lines.append(f"optim    {_optimizer_text(c)}")
        tricks = _tricks_text(c)
        if tricks:
            lines.append(f"tricks   {tricks}")
    lines.append(
        f"eval     {c.eval_protocol}, {_every(c.eval_every_steps, 'every epoch')}; checkpoints "
        f"{_every(c.checkpoint_every_steps, 'at each eval')}, keep {c.keep_checkpoints}"
    )
    if plan.complete:
        state = f"complete at step {plan.resume_step:,}"
    elif plan.saved_steps:
        state = f"resumes from step {plan.resume_step:,}"
    else:
        state = "new run"
    lines.append(f"workdir  {plan.workdir} ({state})")
    lines += [f"changed  {change}" for change in plan.changed]
    return "\n".join(lines)

"""`train_and_evaluate(config, workdir)`: one run, from checks to `done.json`.

Order: `plan_run` checks everything that can be wrong with the input (config values, model,
dataset, workdir) without writing or compiling; then the workdir files, the mesh and the state
(resumed from the workdir's latest checkpoint, else `init_from`'s model variables, else
scratch); then the loop of jitted steps with logging, evaluation and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

import archs
from archs import fast_conv
from archs.model_state import flat_state, load_into, read_model_state, saved_steps
from archs.training import data, optim, parallel, steps
from archs.training.checkpoint import Checkpoints, PreemptionGuard
from archs.training.config import ConfigError, RunError, check_config
from archs.training.metrics import MetricsWriter, provenance, read_jsonl, write_json

# A workdir holds one experiment: these may not change when it is run again.
IDENTITY_KEYS = ("model", "model_kwargs", "dataset")
COMPLETE, PREEMPTED, EVALUATED = "complete", "preempted", "evaluated"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked run: everything known before touching the workdir or compiling."""

    config: ml_collections.ConfigDict
    workdir: str
    info: archs.ModelInfo
    source: data.Source
    num_classes: int
    dtype: Any
    eval_batch_size: int
    init_source: dict[str, np.ndarray] | None  # init_from's model variables, flat by path

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")

    def create_model(self) -> nnx.Module:
        c = self.config
        return archs.create_model(
            c.model,
            num_classes=self.num_classes,
            rngs=nnx.Rngs(c.seed),
            dtype=self.dtype,
            conv=fast_conv.for_backend(jax.default_backend()),
            **c.model_kwargs.to_dict(),
        )


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(config.to_json())
    for key in IDENTITY_KEYS:
        if previous.get(key) != current[key]:
            raise ConfigError(
                f"workdir {workdir!r} holds a run with {key}={previous.get(key)!r}, not "
                f"{current[key]!r}; use another workdir"
            )
    changed = sorted(k for k in current if k != "eval_only" and previous.get(k) != current[k])
    if changed:
        logging.warning("continuing %s with changed settings: %s", workdir, ", ".join(changed))


def plan_run(config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Check the input; raise ConfigError (exit 2) naming the first problem."""
    check_config(config)
    try:
        info = archs.model_info(config.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    parallel.check_batch_size("batch_size", config.batch_size, config.grad_accum_steps)
    eval_batch_size = config.eval_batch_size or config.batch_size
    parallel.check_batch_size("eval_batch_size", eval_batch_size)
    source = data.open_source(config)
    init_source = _read_init_from(config.init_from) if config.init_from else None
    plan = Plan(
        config=config,
        workdir=workdir,
        info=info,
        source=source,
        num_classes=config.num_classes or source.num_classes,
        dtype=jnp.dtype(config.dtype),
        eval_batch_size=eval_batch_size,
        init_source=init_source,
    )
    try:
        abstract = nnx.eval_shape(plan.create_model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_workdir(config, workdir)
    if init_source is not None:
        variables = nnx.state(abstract, nnx.Not(nnx.RngState))
        wanted = {k: v.shape for k, v in flat_state(variables).items()}
        if not any(np.shape(v) == wanted.get(k) for k, v in init_source.items()):
            raise ConfigError(
                f"init_from {config.init_from!r} matches no variable of {config.model}"
            )
    if config.eval_only and not saved_steps(plan.checkpoint_dir) and not config.init_from:
        raise ConfigError(f"eval_only: no checkpoint in {workdir!r} and no init_from")
    return plan


def _read_init_from(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise ConfigError(f"init_from {path!r} does not exist")
    try:
        return read_model_state(path)
    except Exception as e:  # orbax raises many types for a directory that is not a checkpoint
        reason = (str(e).strip() or type(e).__name__).splitlines()[0][:200]
        raise ConfigError(f"init_from {path!r} is not a readable checkpoint: {reason}") from None


class Evaluator:
    """Runs the jitted eval step over every eval example once and averages on the host."""

    def __init__(self, plan: Plan, parts: steps.ModelParts, cfg: steps.StepConfig, mesh):
        self.data = data.EvalData(
            plan.source, plan.eval_batch_size, data.make_preprocess(plan.config, plan.info)
        )
        self.mesh = mesh
        self.step = jax.jit(
            steps.make_eval_step(parts, cfg),
            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
            out_shardings=parallel.replicated(mesh),
        )

    def __call__(self, state: steps.TrainState) -> dict[str, float]:
        total = None
        for batch in data.prefetch(iter(self.data.batches())):
            sums = self.step(state, parallel.global_batch(batch, self.mesh))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        total = jax.device_get(total)
        if int(total["count"]) != self.data.num_examples:
            raise RuntimeError(
                f"evaluated {int(total['count'])} examples, expected {self.data.num_examples}"
            )
        count = total["count"]
        return {
            "eval/loss": float(total["loss_sum"] / count),
            "eval/top1": float(total["top1"] / count),
            "eval/top5": float(total["top5"] / count),
        }


def _initial_state(
    plan: Plan, params: nnx.State, model_state: nnx.State, tx, mesh
) -> steps.TrainState:
    if plan.init_source is not None:
        fresh = load_into(plan.init_source, params) + load_into(plan.init_source, model_state)
        logging.info(
            "init_from %s; freshly initialised: %s", plan.config.init_from, fresh or "none"
        )
    return parallel.replicate(steps.init_state(params, model_state, tx, plan.config.seed), mesh)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, argv: list[str] | None = None
) -> str:
    """Train (or with eval_only, evaluate) as configured; returns 'complete', 'preempted' or
    'evaluated'. Raises ConfigError before any side effect when the input is bad."""
    plan = plan_run(config, workdir)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    os.makedirs(workdir, exist_ok=True)
    if not config.eval_only:
        write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
        write_json(os.path.join(workdir, "provenance.json"), provenance(argv or []))
    if config.download:
        data.prepare(plan.source)
    mesh = parallel.make_mesh()
    with jax.set_mesh(mesh):
        return _run(plan, mesh)


def _run(plan: Plan, mesh) -> str:
    c = plan.config
    preprocess = data.make_preprocess(c, plan.info)
    parts, params, model_state = steps.split_model(plan.create_model())
    train_data = None
    if not c.eval_only:
        train_data = data.TrainData(plan.source, c.batch_size, c.seed, preprocess, c.shuffle_buffer)
    steps_per_epoch = train_data.steps_per_epoch if train_data else 1
    total = c.num_train_steps or max(round(c.num_epochs * steps_per_epoch), 1)
    schedule = optim.learning_rate_schedule(c, steps_per_epoch, total)
    tx = optim.make_optimizer(c, schedule)
    step_cfg = steps.StepConfig(
        mean=plan.info.mean,
        std=plan.info.std,
        dtype=plan.dtype,
        label_smoothing=c.label_smoothing,
        aux_weight=plan.info.aux_weight,
        augment=steps.device_augment(
            data.device_augment_kind(plan.source, preprocess), c.crop_padding
        ),
    )
    evaluate = Evaluator(plan, parts, step_cfg, mesh)
    checkpoints = Checkpoints(plan.checkpoint_dir, c.keep_checkpoints)
    state = _initial_state(plan, params, model_state, tx, mesh)
    step, wall_offset = 0, 0.0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, step, meta = restored
        wall_offset = meta["wall_s"]
        logging.info("resumed from step %d", step)
    writer = MetricsWriter(plan.workdir, total, keep_through_step=None if c.eval_only else step)
    try:
        if c.eval_only:
            writer.eval(step, evaluate(state), replace=True)
            return EVALUATED
        return _train(
            plan,
            mesh,
            state,
            step,
            total,
            train_data,
            tx,
            schedule,
            parts,
            step_cfg,
            evaluate,
            checkpoints,
            writer,
            wall_offset,
        )
    finally:
        checkpoints.close()
        writer.close()


class ProfileWindow:
    """A profiler trace of `count` train steps, started after the first step this process runs
    (which compiles), into `logdir` (TensorBoard's profile tab reads it); off when count is 0."""

    def __init__(self, logdir: str, first_step: int, count: int):
        self.logdir, self.start, self.stop = logdir, first_step + 1, first_step + 1 + count
        self.active = False

    def after_step(self, step: int, state: steps.TrainState) -> None:
        """Call with the steps completed so far and the state the last step returned."""
        if step == self.start and self.stop > self.start:
            jax.block_until_ready(state)
            jax.profiler.start_trace(self.logdir)
            self.active = True
        elif step == self.stop and self.active:
            jax.block_until_ready(state)
            self.__exit__()

    def __enter__(self) -> ProfileWindow:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _train(
    plan,
    mesh,
    state,
    step,
    total,
    train_data,
    tx,
    schedule,
    parts,
    step_cfg,
    evaluate,
    checkpoints,
    writer,
    wall_offset,
) -> str:
    c = plan.config
    train_step = parallel.distribute_train_step(
        lambda axis_name: steps.make_train_step(
            parts,
            tx,
            step_cfg,
            axis_name=axis_name,
            accum_steps=c.grad_accum_steps,
            skip_nonfinite=c.skip_nonfinite,
        ),
        mesh,
        c.parallelism,
        c.bn_mode,
    )
    eval_every = c.eval_every_steps or train_data.steps_per_epoch
    checkpoint_every = c.checkpoint_every_steps or eval_every
    log_every = c.log_every_steps or total
    stacked = c.parallelism == "pmap"
    batches = data.prefetch(
        parallel.global_batch(b, mesh, stacked) for b in train_data.batches(step)
    )
    started = time.time() - wall_offset
    window_start, window_steps = time.time(), 0
    profile = ProfileWindow(os.path.join(plan.workdir, "profile"), step, c.profile_steps)
    with PreemptionGuard() as guard, profile, contextlib.closing(batches):
        while step < total:
            state = train_step(state, next(batches))
            step += 1
            profile.after_step(step, state)
            window_steps += 1
            requested = guard.requested(step)
            save = step % checkpoint_every == 0 or step == total or requested
            evaluating = step % eval_every == 0 or step == total
            if step % log_every == 0 or step == total:
                sums = jax.device_get(state.metrics)
                _check_finite(c, sums, checkpoints)
                state = state.replace(metrics=parallel.replicate(steps.zero_metrics(), mesh))
                now = time.time()
                values = {
                    "train/loss": float(sums["loss_sum"] / max(sums["count"], 1)),
                    "train/top1": float(sums["correct"] / max(sums["count"], 1)),
                    "train/learning_rate": float(schedule(step - 1)),
                    "train/images_per_sec": window_steps * c.batch_size / (now - window_start),
                    "train/wall_s": now - started,
                }
                if c.skip_nonfinite:
                    values["train/skipped_steps"] = float(sums["skipped"])
                writer.train(step, values)
                window_start, window_steps = now, 0
            elif save or evaluating:
                _check_finite(c, jax.device_get(state.metrics), checkpoints)
            paused = time.time()
            eval_metrics = None
            if evaluating or save:
                state = parallel.as_global(state, mesh)
            if evaluating:
                eval_metrics = evaluate(state)
                writer.eval(step, eval_metrics)
            if save:
                checkpoints.save(step, state, {"wall_s": time.time() - started}, eval_metrics)
            window_start += time.time() - paused  # images/s counts training time only
            if requested:
                return PREEMPTED
    _write_done(plan, step, started)
    return COMPLETE


def _check_finite(c: ml_collections.ConfigDict, sums: dict, checkpoints: Checkpoints) -> None:
    """Stop on the first non-finite loss or gradient (before a checkpoint could keep it)."""
    bad_step = int(sums["first_nonfinite"])
    if bad_step and not c.skip_nonfinite:
        last_good = checkpoints.latest_step()
        raise RunError(
            f"non-finite loss, gradient or statistic at step {bad_step}; last good checkpoint: "
            + (f"step {last_good} in {checkpoints.directory}" if last_good else "none")
            + " (config.skip_nonfinite=True skips such updates)"
        )


def _write_done(plan: Plan, step: int, started: float) -> None:
    lines = read_jsonl(os.path.join(plan.workdir, "metrics.jsonl"))
    evals = [r for r in lines if "eval/top1" in r]
    train = [r["train/images_per_sec"] for r in lines if "train/images_per_sec" in r]
    final = evals[-1] if evals else {}
    write_json(
        os.path.join(plan.workdir, "done.json"),
        {
            **final,
            "step": step,
            "wall_s": time.time() - started,
            "best_eval/top1": max((r["eval/top1"] for r in evals), default=None),
            "eval_protocol": plan.config.eval_protocol,
            "median_train/images_per_sec": float(np.median(train)) if train else None,
        },
    )

"""`train_and_evaluate(config, workdir)`: one run, told as its phases.

1. check: `plan_run` checks everything that can be wrong with the input, writing nothing;
2. prepare the workdir: take its lock, write config.json, add this launch to provenance.json;
3. build: the mesh, the data, the model and its trainer (trainer.py);
4. restore: the workdir's latest checkpoint, else `init_from`'s weights at step 0, else scratch;
5. loop: jitted steps, progress lines, evaluations and checkpoints, until the last step or a
   stop request (SIGTERM, Ctrl-C: save, then stop);
6. finish: done.json, and the exit status of this launch in provenance.json.
`evaluate_only` is the short path of `config.eval_only`: restore and evaluate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from clu import periodic_actions

from archs.cli_errors import ExitCode
from archs.training import console, data, parallel, steps
from archs.training.checkpoint import Checkpoints
from archs.training.errors import RunError
from archs.training.evaluation import Evaluator
from archs.training.interrupts import StopRequests
from archs.training.metrics import MetricsWriter, record_exit, record_launch, write_json
from archs.training.plan import Plan, describe, plan_run
from archs.training.runs import read_metrics, summarize
from archs.training.trainer import Trainer, build_trainer
from archs.training.workdir import WorkdirLock

COMPLETE, PREEMPTED, INTERRUPTED, EVALUATED = "complete", "preempted", "interrupted", "evaluated"
EXIT_CODES = {
    COMPLETE: ExitCode.COMPLETE,
    EVALUATED: ExitCode.COMPLETE,
    PREEMPTED: ExitCode.PREEMPTED,
    INTERRUPTED: ExitCode.INTERRUPTED,
}


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) happens after `step`: every `every`
    steps (0: never) and always after the last one."""
    return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, argv: list[str] | None = None
) -> str:
    """Train (or with eval_only, evaluate) as configured; returns 'complete', 'preempted',
    'interrupted' or 'evaluated'. Raises ConfigError before any side effect when the input is
    bad, RunError when the run cannot go on."""
    plan = plan_run(config, workdir)
    if config.eval_only:
        return evaluate_only(plan)
    if config.download and plan.train_examples is None:
        data.prepare(plan.source)
        plan = plan_run(config, workdir)
    console.say(describe(plan))
    if plan.complete:
        console.say(_complete_line(plan.done))
        return COMPLETE
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    with _workdir(plan, argv or [], record=True) as outcome:
        console.say("preparing: reading the data, building the model and its state")
        mesh = parallel.make_mesh()
        with jax.set_mesh(mesh), _Run.build(plan, mesh) as run:
            run.restore()
            outcome.status = run.train()
            if outcome.status == COMPLETE:
                run.finish()
    return outcome.status


def evaluate_only(plan: Plan) -> str:
    """Evaluate the workdir's latest checkpoint (or init_from's weights); the eval line of its
    step replaces any earlier one."""
    console.say(describe(plan))
    with _workdir(plan, [], record=False):
        mesh = parallel.make_mesh()
        with jax.set_mesh(mesh), _Run.build(plan, mesh) as run:
            run.restore()
            metrics = run.evaluator(run.state)
            run.writer.replace_eval(run.step, metrics)
            console.say(console.eval_line(run.step, metrics))
    return EVALUATED


@dataclasses.dataclass
class _Outcome:
    status: str | None = None


@contextlib.contextmanager
def _workdir(plan: Plan, argv: list[str], record: bool) -> Iterator[_Outcome]:
    """The workdir, locked by this run while it is inside; with `record`, config.json and this
    launch in provenance.json, and the launch's exit status when it ends."""
    with WorkdirLock(
        plan.workdir, process_index=jax.process_index(), process_count=jax.process_count()
    ):
        if record:
            write_json(os.path.join(plan.workdir, "config.json"), plan.config.to_dict())
            record_launch(plan.workdir, argv)
        outcome = _Outcome()
        try:
            yield outcome
        except RunError:
            if record:
                record_exit(plan.workdir, ExitCode.RUN_ERROR)
            raise
        if record and outcome.status is not None:
            record_exit(plan.workdir, EXIT_CODES[outcome.status])


def _complete_line(done: dict[str, Any]) -> str:
    top1 = done.get("eval/top1")
    result = f", eval top-1 {top1:.4f}" if top1 is not None else ""
    return f"complete: step {done['step']:,}{result}; nothing to do"


class _TrainClock:
    """Wall seconds since the run first started (earlier launches included), and the seconds
    of this launch spent in train steps (evaluations and checkpoints paused), for images/s."""

    def __init__(self, earlier_wall_s: float):
        self.started = time.time() - earlier_wall_s
        self.launched = time.time()
        self._paused_s = 0.0

    @property
    def wall_s(self) -> float:
        return time.time() - self.started

    @property
    def training_s(self) -> float:
        return time.time() - self.launched - self._paused_s

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self._paused_s += time.time() - start


@dataclasses.dataclass
class _Run:
    """One launch's pieces, in the order the loop uses them."""

    plan: Plan
    mesh: Any
    trainer: Trainer
    state: steps.TrainState
    train_data: data.TrainData | None
    evaluator: Evaluator
    checkpoints: Checkpoints
    writer: MetricsWriter | None = None
    step: int = 0
    clock: _TrainClock | None = None

    @classmethod
    @contextlib.contextmanager
    def build(cls, plan: Plan, mesh: Any) -> Iterator[_Run]:
        c = plan.config
        augment = steps.device_augment(
            data.device_augment_kind(plan.source, plan.preprocess),
            c.crop_padding,
            data.device_randaugment(plan.source, plan.preprocess),
        )
        trainer, state, _ = build_trainer(
            c,
            plan.create_model(),
            schedule=plan.optimizer_schedule,
            mean=tuple(c.input_mean),
            std=tuple(c.input_std),
            aux_weight=plan.info.aux_weight,
            augment=augment,
            mesh=mesh,
            init_source=plan.init_source,
        )
        # DALI places its batches on the devices itself (jit's sharding; pmap reshapes rows).
        sharding = parallel.batch_sharded(mesh) if c.parallelism == "jit" else None
        train_data = None
        if not c.eval_only:
            train_data = data.TrainData(
                plan.source, c.batch_size, c.seed, plan.preprocess, c.shuffle_buffer, sharding
            )
        evaluator = Evaluator(
            data.EvalData(plan.source, plan.eval_batch_size, plan.preprocess, sharding),
            trainer.eval_step,
            mesh,
        )
        run = cls(
            plan, mesh, trainer, state, train_data, evaluator,
            Checkpoints(plan.checkpoint_dir, c.keep_checkpoints),
        )  # fmt: skip
        try:
            yield run
        finally:
            run.checkpoints.close()
            if run.writer is not None:
                run.writer.close()

    def restore(self) -> None:
        """The latest checkpoint that restores, else step 0 (init_from's weights or scratch)."""
        restored = self.checkpoints.restore_latest(self.state)
        wall_s = 0.0
        if restored is not None:
            self.state, self.step, meta = restored
            wall_s = meta["wall_s"]
        self.clock = _TrainClock(wall_s)
        keep = None if self.plan.config.eval_only else self.step
        self.writer = MetricsWriter(self.plan.workdir, keep, self.plan.config)

    def train(self) -> str:
        """Steps until the last one (COMPLETE) or a stop request (PREEMPTED, INTERRUPTED)."""
        plan, c = self.plan, self.plan.config
        total = plan.total_steps
        eval_every = c.eval_every_steps or plan.steps_per_epoch
        save_every = c.checkpoint_every_steps or eval_every
        log_every = c.log_every_steps or total
        pmap = c.parallelism == "pmap"
        batches = data.prefetch(
            parallel.global_batch(b, self.mesh, pmap) for b in self.train_data.batches(self.step)
        )
        profile = c.profile_steps and periodic_actions.Profile(
            logdir=os.path.join(plan.workdir, "profile"),
            num_profile_steps=c.profile_steps,
            profile_duration_ms=None,
            first_profile=self.step + 2,  # after the step that compiles
            every_secs=None,
        )
        rate = _Rate(self.step, self.clock)
        if self.step < total:
            start = "starting" if self.step == 0 else f"resuming at step {self.step:,}"
            every = "every step" if log_every == 1 else f"every {log_every:,} steps"
            console.say(f"{start}: compiling the train step; progress {every}")
        with StopRequests() as stop, contextlib.closing(batches):
            pending = due(self.step, eval_every, total) and not self._evaluated(self.step)
            # A restored step whose evaluation was interrupted is evaluated first.
            if self.step and pending and not self._evaluate_and_save(stop, save=False):
                return self._stopped(stop)
            finishing = None  # ready when the last step dispatched has run
            while self.step < total:
                self.state = self.trainer.train_step(self.state, next(batches))
                # JAX dispatches steps without waiting for them: wait for the previous one, so
                # the host runs one step ahead of the devices (keeping them busy), not tens of
                # steps, and a stop request is saved at the next step, not after a backlog.
                if finishing is not None:
                    finishing.block_until_ready()
                finishing = jnp.copy(self.state.step)  # not donated to the next step
                self.step += 1
                if profile:
                    profile(self.step)
                stopping = stop.requested()
                evaluating = due(self.step, eval_every, total)
                saving = due(self.step, save_every, total) or stopping
                if due(self.step, log_every, total):
                    self._log_train(rate)
                elif evaluating or saving:
                    self._check_finite(jax.device_get(self.state.metrics))
                if evaluating or saving:
                    with self.clock.paused():
                        finished = self._evaluate_and_save(stop, save=saving, evaluate=evaluating)
                    stopping = stopping or not finished
                if stopping:
                    return self._stopped(stop)
        _stop_profile_trace()
        return COMPLETE

    def _evaluated(self, step: int) -> bool:
        return any(
            r["step"] == step and "eval/top1" in r
            for r in read_metrics(os.path.join(self.plan.workdir, "metrics.jsonl"))
        )

    def _evaluate_and_save(self, stop: StopRequests, save: bool, evaluate: bool = True) -> bool:
        """Evaluate and/or checkpoint the current state; False when a stop request cut the
        evaluation short (the state is then saved without its evaluation)."""
        self.state = parallel.as_global(self.state, self.mesh)
        metrics = None
        if evaluate:
            metrics = self.evaluator(self.state, stop)
            if metrics is not None:
                self.writer.write(self.step, metrics)
                console.say(console.eval_line(self.step, metrics))
        if save or (evaluate and metrics is None):
            self.checkpoints.save(self.step, self.state, {"wall_s": self.clock.wall_s}, metrics)
        return not evaluate or metrics is not None

    def _stopped(self, stop: StopRequests) -> str:
        _stop_profile_trace()
        self.checkpoints.wait()
        console.say(f"saved step {self.step:,}; run the same command to resume")
        return INTERRUPTED if stop.exit_code == ExitCode.INTERRUPTED else PREEMPTED

    def _log_train(self, rate: _Rate) -> None:
        c = self.plan.config
        sums = jax.device_get(self.state.metrics)
        self._check_finite(sums)
        self.state = self.state.replace(metrics=parallel.replicate(steps.zero_metrics(), self.mesh))
        count = max(sums["count"], 1)
        values = {
            "train/loss": float(sums["loss_sum"] / count),
            "train/top1": float(sums["correct"] / count),
            "train/learning_rate": float(self.plan.schedule(self.step - 1)),
            "train/images_per_sec": rate.images_per_sec(self.step, c.batch_size),
            "train/wall_s": self.clock.wall_s,
        }
        if c.skip_nonfinite:
            values["train/skipped_steps"] = float(sums["skipped"])
        self.writer.write(self.step, values)
        eta = rate.eta_s(self.step, self.plan.total_steps)
        console.say(
            console.progress_line(
                self.step, self.plan.total_steps, self.plan.steps_per_epoch, values, eta
            )
        )

    def _check_finite(self, sums: dict) -> None:
        """Stop on the first non-finite loss or gradient (before a checkpoint could keep it)."""
        bad_step = int(sums["first_nonfinite"])
        if bad_step and not self.plan.config.skip_nonfinite:
            last_good = self.checkpoints.latest_step()
            raise RunError(
                f"non-finite loss, gradient or statistic at step {bad_step}; last good "
                "checkpoint: "
                + (f"step {last_good} in {self.checkpoints.directory}" if last_good else "none")
                + " (config.skip_nonfinite=True skips such updates)"
            )

    def finish(self) -> None:
        """done.json: the final and best evaluation, where the best checkpoint is, the speed."""
        self.checkpoints.wait()
        summary = summarize(read_metrics(os.path.join(self.plan.workdir, "metrics.jsonl")))
        best = summary.best_step
        best_dir = os.path.join(self.plan.checkpoint_dir, str(best)) if best else None
        done = {
            **summary.done_fields(),
            "step": self.step,
            "wall_s": self.clock.wall_s,
            "best_checkpoint": best_dir if best_dir and os.path.isdir(best_dir) else None,
            "eval_protocol": self.plan.config.eval_protocol,
        }
        write_json(os.path.join(self.plan.workdir, "done.json"), done)
        top1 = done.get("eval/top1")
        console.say(
            f"done: step {self.step:,}"
            + (f", eval top-1 {top1:.4f}" if top1 is not None else "")
            + (f" (best {done['best_eval/top1']:.4f} at step {best:,})" if best else "")
            + f" in {console.duration(done['wall_s'])}; {self.plan.workdir}/done.json"
        )


class _Rate:
    """Images/s over the training time since the previous log line, and the ETA at this
    launch's pace."""

    def __init__(self, step: int, clock: _TrainClock):
        self.clock = clock
        self.first_step = self.last_step = step
        self.last_training_s = clock.training_s

    def images_per_sec(self, step: int, batch_size: int) -> float:
        now = self.clock.training_s
        rate = (step - self.last_step) * batch_size / max(now - self.last_training_s, 1e-9)
        self.last_step, self.last_training_s = step, now
        return rate

    def eta_s(self, step: int, total: int) -> float:
        elapsed = time.time() - self.clock.launched
        return (total - step) * elapsed / max(step - self.first_step, 1)


def _stop_profile_trace() -> None:
    """End a profiler trace still running when the loop ends (clu's Profile stops it only
    after its number of steps)."""
    with contextlib.suppress(RuntimeError):  # no trace running
        jax.profiler.stop_trace()

"""Checkpoints with orbax: the periodic/best/final saves, resume, `init_from`, preemption.

A checkpoint holds the whole `TrainState` (model parameters and statistics as pure dicts,
optimizer state, step, RNG, unlogged train metrics) plus JSON metadata (wall time). Kept: the
last `keep_checkpoints` and the best by eval top-1. Restores land on the current mesh through
the shardings of the target, so a checkpoint written on N devices (or processes) restores onto
M. orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoints usable; a complete but damaged one is moved aside to
`checkpoints_corrupt/` and the next older one restored.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from archs.cli_errors import first_line
from archs.model_state import key
from archs.training.errors import RunError
from archs.training.steps import TrainState

BEST_METRIC = "eval/top1"


def _to_tree(state: TrainState) -> dict[str, Any]:
    tree = {
        "step": state.step,
        "params": nnx.to_pure_dict(state.params),
        "model_state": nnx.to_pure_dict(state.model_state),
        "opt_state": state.opt_state,
        "rng": state.rng,
        "metrics": state.metrics,
    }
    if state.ema is not None:  # ema_decay > 0; runs without it keep the layout they had
        tree["ema"] = {
            "params": nnx.to_pure_dict(state.ema.params),
            "model_state": nnx.to_pure_dict(state.ema.model_state),
        }
    return tree


def _from_tree(tree: dict[str, Any], like: TrainState) -> TrainState:
    params, model_state = like.params, like.model_state
    nnx.replace_by_pure_dict(params, tree["params"])
    nnx.replace_by_pure_dict(model_state, tree["model_state"])
    averaged = like.ema
    if averaged is not None:
        nnx.replace_by_pure_dict(averaged.params, tree["ema"]["params"])
        nnx.replace_by_pure_dict(averaged.model_state, tree["ema"]["model_state"])
    return TrainState(
        step=tree["step"],
        params=params,
        model_state=model_state,
        opt_state=tree["opt_state"],
        rng=tree["rng"],
        metrics=tree["metrics"],
        ema=averaged,
    )


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        key(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def layout_difference(directory: str, step: int, like: TrainState) -> str | None:
    """What differs between the train state saved at `step` and the (abstract) `like`: the first
    variable one has and the other has not, or whose shape differs; None when they match. A
    config that changes the state's layout (another optimizer, EMA or clipping switched on or
    off) cannot resume a checkpoint, and must not be taken for a damaged one."""
    saved = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
    ours, theirs = _leaf_shapes(_to_tree(like)), _leaf_shapes(saved.item_metadata.tree)
    for name in sorted(ours.keys() | theirs.keys()):
        if name not in theirs:
            return f"{name} is not in the checkpoint"
        if name not in ours:
            return f"the checkpoint holds {name}, which this config has no use for"
        if ours[name] != theirs[name]:
            return f"{name} has shape {theirs[name]} in the checkpoint, {ours[name]} here"
    return None


class Checkpoints:
    """An orbax CheckpointManager keeping the last `keep` and the best by eval top-1."""

    def __init__(self, directory: str, keep: int):
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                policies.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                create=True,
                # Each save's directories are made before it returns (a few mkdirs): made in
                # the background, they could come after the JSON item's write under load
                # (orbax 0.12.8), which then failed with the checkpoint half-written.
                async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], eval_metrics: dict | None
    ) -> None:
        """Save asynchronously (device arrays are copied before this returns)."""
        if step in self.manager.all_steps():
            return
        with _disk_full_is_a_run_error(self.directory, f"step {step}"):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(meta)
                ),
                metrics=eval_metrics,
                force=True,
            )

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The checkpoint of `step`, placed like the (abstract, sharded) `like`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_to_tree(like)), meta=ocp.args.JsonRestore()
            ),
        )
        return _from_tree(restored.state, like), dict(restored.meta)

    def restore_latest(self, like: TrainState) -> tuple[TrainState, int, dict[str, Any]] | None:
        """The newest checkpoint that restores: (state, step, metadata); None when there is
        none. A damaged one is moved to `checkpoints_corrupt/` with a warning."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                state, meta = self.restore(step, like)
            except Exception as error:  # tensorstore and orbax raise many types for bad files
                self._quarantine(step, error)
                continue
            return state, step, meta
        if steps:
            raise RunError(
                f"no checkpoint in {self.directory} restores (all moved to "
                f"{self._quarantine_dir}); re-run to start from scratch"
            )
        return None

    @property
    def _quarantine_dir(self) -> str:
        return os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt")

    def _quarantine(self, step: int, error: Exception) -> None:
        target = os.path.join(self._quarantine_dir, str(step))
        reason = first_line(error)
        logging.warning(
            "checkpoint step %d in %s does not restore (%s); moved to %s, trying an older one",
            step,
            self.directory,
            reason,
            target,
        )
        if jax.process_index() == 0:
            os.makedirs(self._quarantine_dir, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self.manager.reload()

    def wait(self) -> None:
        """Until every save started has been written."""
        with _disk_full_is_a_run_error(self.directory, "a checkpoint"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


@contextlib.contextmanager
def _disk_full_is_a_run_error(directory: str, what: str) -> Iterator[None]:
    """'No space left on device' anywhere in an exception's chain becomes a RunError."""
    try:
        yield
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
                raise RunError(
                    f"disk full while saving {what} to {directory}; the checkpoints already "
                    "there are intact; free space and re-run to resume"
                ) from error
            cause = cause.__cause__ or cause.__context__
        raise

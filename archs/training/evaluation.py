"""Evaluation over a whole split: every example once, averaged on the host, interruptible.

The eval data pads the last global batch and masks the padding, so the count of evaluated
examples is checked against the split's size. A stop request (SIGTERM, Ctrl-C) ends an
evaluation between two batches, within seconds, instead of after it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from archs.training import console, data, parallel, steps
from archs.training.interrupts import StopRequests


class Evaluator:
    """`evaluator(state)` -> {'eval/loss', 'eval/top1', 'eval/top5'} (and the same of the
    EMA weights, 'eval/ema_loss', ..., when the eval step computes them), or None when
    stopped."""

    def __init__(
        self,
        eval_data: data.EvalData,
        eval_step: Callable[[steps.TrainState, steps.Batch], dict[str, dict[str, jax.Array]]],
        mesh: Mesh,
    ):
        self.data = eval_data
        self.step = eval_step
        self.mesh = mesh

    def __call__(
        self, state: steps.TrainState, stop: StopRequests | None = None
    ) -> dict[str, float] | None:
        total = None
        progress = console.EvalProgress(self.data.num_batches)
        batches = data.prefetch(iter(self.data.batches()))
        try:
            for done, batch in enumerate(batches, 1):
                sums = self.step(state, parallel.global_batch(batch, self.mesh))
                total = sums if total is None else jax.tree.map(jnp.add, total, sums)
                if stop is not None and stop.requested():
                    return None
                progress(done)
        finally:
            batches.close()
        metrics = {}
        for prefix, sums in jax.device_get(total).items():
            count = int(sums["count"])
            if count != self.data.num_examples:
                raise RuntimeError(f"evaluated {count} examples, expected {self.data.num_examples}")
            metrics[f"{prefix}loss"] = float(sums["loss_sum"] / count)
            metrics[f"{prefix}top1"] = float(sums["top1"] / count)
            metrics[f"{prefix}top5"] = float(sums["top5"] / count)
        return metrics

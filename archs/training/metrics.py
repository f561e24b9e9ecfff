"""Where a run's numbers go: metrics.jsonl, TensorBoard (clu), progress lines, JSON files.

`metrics.jsonl` follows DESIGN's contract: one object per line, each with `step`; train lines
carry `train/loss`, `train/top1`, `train/learning_rate`, `train/images_per_sec`,
`train/wall_s`; eval lines `eval/loss`, `eval/top1`, `eval/top5`. A resumed run first drops
the lines past its restored step, so each step appears once. Only process 0 writes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import jax
from absl import logging
from clu import metric_writers

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "clu",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-datasets",
    "numpy",
    "ml-collections",
)


def write_json(path: str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically (rename), from process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def provenance(argv: list[str]) -> dict[str, Any]:
    """Command line, git commit, package versions, devices: how to reproduce the run."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "command": [sys.executable, *argv],
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "packages": versions,
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform": jax.default_backend(),
        "hostname": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsWriter:
    """metrics.jsonl + TensorBoard events + a progress line per train log."""

    def __init__(self, workdir: str, total_steps: int, keep_through_step: int | None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self.is_writer = jax.process_index() == 0
        if self.is_writer and keep_through_step is not None:
            kept = [r for r in read_jsonl(self.path) if r["step"] <= keep_through_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        self.tensorboard = metric_writers.create_default_writer(
            workdir, just_logging=not self.is_writer, asynchronous=False
        )

    def _append(self, step: int, values: dict[str, float]) -> None:
        if self.is_writer:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        self.tensorboard.write_scalars(step, values)
        self.tensorboard.flush()

    def train(self, step: int, values: dict[str, float]) -> None:
        self._append(step, values)
        remaining = (self.total_steps - step) / max(step, 1) * values["train/wall_s"]
        logging.info(
            "step %d/%d  loss %.4f  top1 %.4f  lr %.4g  %.0f img/s  ETA %s",
            step,
            self.total_steps,
            values["train/loss"],
            values["train/top1"],
            values["train/learning_rate"],
            values["train/images_per_sec"],
            format_duration(remaining),
        )

    def eval(self, step: int, values: dict[str, float], replace: bool = False) -> None:
        """An eval line; `replace` drops an earlier eval line of the same step (eval_only)."""
        if replace and self.is_writer:
            kept = [
                r
                for r in read_jsonl(self.path)
                if not (r["step"] == step and any(k.startswith("eval/") for k in r))
            ]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        self._append(step, values)
        logging.info(
            "eval at step %d: loss %.4f  top1 %.4f  top5 %.4f",
            step,
            values["eval/loss"],
            values["eval/top1"],
            values["eval/top5"],
        )

    def close(self) -> None:
        self.tensorboard.close()

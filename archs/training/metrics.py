"""Where a run's numbers go: metrics.jsonl, TensorBoard (clu), and the JSON files of a workdir.

`metrics.jsonl` follows the run contract of docs/design.md: one object per line, each with
`step`; train lines carry `train/loss`, `train/top1`, `train/learning_rate`,
`train/images_per_sec`, `train/wall_s`; eval lines `eval/loss`, `eval/top1`, `eval/top5`. A
resumed run first drops the lines past its restored step, and tells TensorBoard to drop its
events past that step too (a SessionLog START event, TensorBoard's own mechanism for the steps
a crashed run wrote after its last checkpoint), so each step appears once in both.
`provenance.json` keeps every launch of the run. The same scalars go to TensorBoard and to the
experiment trackers the config's `writers` name. Only process 0 writes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
from clu import metric_writers
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from archs.training import trackers
from archs.training.runs import PROVENANCE_NAME, read_launches, read_metrics

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


def _git(*args: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def launch_record(argv: list[str]) -> dict[str, Any]:
    """Command line, git commit, package versions, devices, host: how to reproduce a launch."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "command": [sys.executable, *argv],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "packages": versions,
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform": jax.default_backend(),
        "hostname": platform.node(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "exit_status": None,
    }


def record_launch(workdir: str, argv: list[str]) -> None:
    """Append this launch to provenance.json."""
    launches = [*read_launches(workdir), launch_record(argv)]
    write_json(os.path.join(workdir, PROVENANCE_NAME), {"launches": launches})


def record_exit(workdir: str, status: int) -> None:
    """The exit status of this (the last) launch."""
    launches = read_launches(workdir)
    if launches:
        launches[-1]["exit_status"] = int(status)
        write_json(os.path.join(workdir, PROVENANCE_NAME), {"launches": launches})


def _start_tensorboard_session(logdir: str, step: int) -> None:
    """A SessionLog START event at `step + 1`, for every launch: TensorBoard takes the first one
    for the start of the run and each later one for a restart, dropping every event of a step
    past `step` read before it. It goes in an event file of its own, named one second before
    now so that it sorts after the earlier launches' files and before the file of this one."""
    name = (
        f"events.out.tfevents.{int(time.time()) - 1:010d}.{socket.gethostname()}"
        f".{os.getpid()}.start"
    )
    with open(os.path.join(logdir, name), "wb") as f:
        writer = RecordWriter(f)
        for event in (
            event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"),
            event_pb2.Event(
                wall_time=time.time(),
                step=step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            ),
        ):
            writer.write(event.SerializeToString())
        writer.flush()


class MetricsWriter:
    """metrics.jsonl, and the same scalars to the `writers` of the config: TensorBoard events
    (clu) and experiment trackers (trackers.py). Process 0 writes; elsewhere these are no-ops."""

    def __init__(
        self, workdir: str, keep_through_step: int | None, config: ml_collections.ConfigDict
    ):
        """`keep_through_step`: drop what an earlier launch wrote past this step (a resume);
        None keeps everything (an evaluation of a finished run)."""
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.is_writer = jax.process_index() == 0
        self.writers = None
        if not self.is_writer:
            return
        if keep_through_step is not None and os.path.exists(self.path):
            self._rewrite([r for r in read_metrics(self.path) if r["step"] <= keep_through_step])
        writers = trackers.open_trackers(config.writers, workdir, json.loads(config.to_json()))
        if "tensorboard" in config.writers:
            if keep_through_step is not None:
                _start_tensorboard_session(workdir, keep_through_step)
            writers.append(metric_writers.SummaryWriter(workdir))
        self.writers = metric_writers.MultiWriter(writers)

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def write(self, step: int, values: dict[str, float]) -> None:
        """One line of metrics.jsonl and the same scalars in TensorBoard."""
        if not self.is_writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.writers.write_scalars(step, values)
        self.writers.flush()

    def replace_eval(self, step: int, values: dict[str, float]) -> None:
        """The eval line of `step`, replacing an earlier one (eval_only evaluates again)."""
        if self.is_writer:
            self._rewrite(
                [
                    r
                    for r in read_metrics(self.path)
                    if not (r["step"] == step and any(k.startswith("eval/") for k in r))
                ]
            )
        self.write(step, values)

    def close(self) -> None:
        if self.writers is not None:
            self.writers.close()

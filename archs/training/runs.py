"""What a run's workdir says about the run: its metrics, their summary, and the run's state.

`read_metrics` is the one reader of `metrics.jsonl`; `summarize` turns its lines into the
numbers `done.json` records and the report shows (best and final eval accuracy, the best step,
steps, wall time, throughput); `run_status` tells a finished run from a running, preempted,
interrupted, failed, stopped or never started one, from `done.json`, the workdir lock
(`archs.training.workdir`) and the exit status each launch recorded in `provenance.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from archs.cli_errors import ExitCode
from archs.training.workdir import Holder, holder

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
DONE_NAME = "done.json"
PROVENANCE_NAME = "provenance.json"
SWEEP_NAME = "sweep.json"  # in a sweep's --workdir: the runs it launches, by name

STATES = (
    "done",  # done.json exists
    "running",  # a live process holds the workdir lock
    "preempted",  # the last launch exited 75: relaunching resumes it
    "interrupted",  # the last launch exited 130 (Ctrl-C)
    "failed",  # the last launch exited with another non-zero status
    "evaluated",  # the last launch exited 0 without done.json: an eval_only launch
    "stopped",  # launched, but no live holder and no exit status: killed
    "not started",  # no launch recorded, no metrics
)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}`.

    An empty dict holds no setting and is left out (a run with `model_kwargs={}` and one with
    `model_kwargs.x=1` differ by `model_kwargs.x` only); lists become tuples, so values can be
    compared and hashed.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple((k, _hashable(v)) for k, v in value.items())
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl in the order written ([] when there is no file).

    Lines that are not a JSON object with an integer `step` are skipped: a line torn by a
    process killed while writing it is not an error.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            lines.append(record)
    return lines


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """A run's numbers as its metrics lines give them (accuracies as fractions; None: none yet).

    `best_top1` is the highest eval top-1 and `best_step` the step it was measured at (the
    first, on a tie); `best_top5` the highest eval top-5 at any step; `final_*` come from the
    last eval line (`final_eval`, as written); `steps` is the last step logged; `wall_s` the last
    `train/wall_s` (seconds since the run first started); `images_per_sec` the median of
    `train/images_per_sec`; `best_ema_top1`/`final_ema_top1` the same for the moving average
    of the weights (`ema_decay` > 0; None without it).
    """

    steps: int = 0
    best_top1: float | None = None
    best_step: int | None = None
    best_top5: float | None = None
    final_top1: float | None = None
    final_top5: float | None = None
    final_eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float | None = None
    images_per_sec: float | None = None
    best_ema_top1: float | None = None
    final_ema_top1: float | None = None

    def done_fields(self) -> dict[str, Any]:
        """done.json's numbers: the last eval line's keys, then `step`, `wall_s`,
        `best_eval/top1`, `best_eval/top5`, `best_step`, `median_train/images_per_sec` (and
        `best_eval/ema_top1` with EMA)."""
        ema = {} if self.best_ema_top1 is None else {"best_eval/ema_top1": self.best_ema_top1}
        return {
            **ema,
            **self.final_eval,
            "step": self.steps,
            "wall_s": self.wall_s,
            "best_eval/top1": self.best_top1,
            "best_eval/top5": self.best_top5,
            "best_step": self.best_step,
            "median_train/images_per_sec": self.images_per_sec,
        }


def summarize(lines: Sequence[Mapping[str, Any]]) -> RunSummary:
    """The summary of a run's metrics lines (as `read_metrics` returns them)."""
    ordered = sorted(lines, key=lambda line: line["step"])  # stable: the later line wins a tie
    evals = [line for line in ordered if "eval/top1" in line]
    best = max(evals, key=lambda line: line["eval/top1"], default=None)
    top5 = [line["eval/top5"] for line in evals if "eval/top5" in line]
    final = evals[-1] if evals else {}
    walls = [line["train/wall_s"] for line in ordered if "train/wall_s" in line]
    speeds = [line["train/images_per_sec"] for line in ordered if "train/images_per_sec" in line]
    ema = [line["eval/ema_top1"] for line in evals if "eval/ema_top1" in line]
    return RunSummary(
        steps=ordered[-1]["step"] if ordered else 0,
        best_top1=best["eval/top1"] if best else None,
        best_step=best["step"] if best else None,
        best_top5=max(top5, default=None),
        final_top1=final.get("eval/top1"),
        final_top5=final.get("eval/top5"),
        final_eval=dict(final),
        wall_s=max(walls, default=None),
        images_per_sec=statistics.median(speeds) if speeds else None,
        best_ema_top1=max(ema, default=None),
        final_ema_top1=final.get("eval/ema_top1"),
    )


def read_launches(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The launches provenance.json records, the last one last ([] when none can be read).

    The format is `{"launches": [{..., "exit_status": int or null}, ...]}`; a single object
    without "launches" (the first format, with no exit status) counts as one launch.
    """
    try:
        provenance = json.loads((Path(run_dir) / PROVENANCE_NAME).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(provenance, dict):
        return []
    launches = provenance.get("launches", [provenance])
    return [launch for launch in launches if isinstance(launch, dict)]


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """A run's state (one of STATES); `exit_status` of its last launch when it recorded one;
    `holder`: the workdir lock's holder, alive when running, dead when stopped."""

    state: str
    exit_status: int | None = None
    holder: Holder | None = None

    def __str__(self) -> str:
        return f"failed (exit {self.exit_status})" if self.state == "failed" else self.state


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """The state of the run in `run_dir`."""
    run_dir = Path(run_dir)
    if (run_dir / DONE_NAME).exists():
        return RunStatus("done")
    current = holder(run_dir)
    if current is not None and current.alive:
        return RunStatus("running", holder=current)
    launches = read_launches(run_dir)
    exit_status = launches[-1].get("exit_status") if launches else None
    if not isinstance(exit_status, int):
        launched = launches or current is not None or (run_dir / METRICS_NAME).exists()
        return RunStatus("stopped" if launched else "not started", holder=current)
    state = {
        ExitCode.COMPLETE: "evaluated",
        ExitCode.PREEMPTED: "preempted",
        ExitCode.INTERRUPTED: "interrupted",
    }
    return RunStatus(state.get(exit_status, "failed"), exit_status, current)


def sweep_run_names(sweep_dir: str | os.PathLike) -> list[str]:
    """The names of the runs a sweep launched into `sweep_dir` (its sweep.json), started or not;
    [] where there is none."""
    try:
        runs = json.loads((Path(sweep_dir) / SWEEP_NAME).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [run["name"] for run in runs if isinstance(run, dict) and "name" in run]

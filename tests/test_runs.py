"""A run's workdir read back: metrics lines, their summary, and the run's state."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archs.training import runs
from archs.training.workdir import LOCK_NAME, WorkdirLock

LINES = [
    {"step": 50, "train/loss": 2.0, "train/images_per_sec": 100.0, "train/wall_s": 5.0},
    {"step": 100, "eval/loss": 1.0, "eval/top1": 0.7, "eval/top5": 0.90},
    {"step": 150, "train/loss": 1.0, "train/images_per_sec": 300.0, "train/wall_s": 9.0},
    {"step": 150, "train/loss": 1.0, "train/images_per_sec": 250.0, "train/wall_s": 9.5},
    {"step": 200, "eval/loss": 0.5, "eval/top1": 0.7, "eval/top5": 0.95},
    {"step": 300, "eval/loss": 0.6, "eval/top1": 0.6, "eval/top5": 0.93, "eval/ema_top1": 0.65},
]


def write_lines(path: Path, lines, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + tail)
    return path


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = write_lines(tmp_path / "metrics.jsonl", LINES, tail='{"step": 301, "train/lo')
    assert runs.read_metrics(path) == LINES
    assert runs.read_metrics(tmp_path / "missing.jsonl") == []
    assert runs.read_metrics(write_lines(tmp_path / "empty.jsonl", [])) == []
    odd = write_lines(tmp_path / "odd.jsonl", [[1, 2], {"no": "step"}, {"step": 1}], tail="\n")
    assert runs.read_metrics(odd) == [{"step": 1}]


def test_summary_names_the_best_step():
    summary = runs.summarize(LINES[::-1])  # the order of the lines does not matter
    assert summary.best_top1 == 0.7 and summary.best_step == 100  # the first of a tie
    assert (summary.final_top1, summary.final_top5, summary.best_top5) == (0.6, 0.93, 0.95)
    assert (summary.best_ema_top1, summary.final_ema_top1) == (0.65, 0.65)
    assert summary.steps == 300 and summary.wall_s == 9.5
    assert summary.images_per_sec == 250.0  # the median of 100, 300, 250
    done = summary.done_fields()
    assert done == {
        **LINES[-1],
        "step": 300,
        "wall_s": 9.5,
        "best_eval/top1": 0.7,
        "best_eval/top5": 0.95,
        "best_step": 100,
        "best_eval/ema_top1": 0.65,
        "median_train/images_per_sec": 250.0,
    }


def test_summary_of_a_run_without_eval_or_lines():
    train_only = runs.summarize(LINES[:1])
    assert train_only.steps == 50 and train_only.images_per_sec == 100.0
    assert train_only.best_top1 is train_only.final_top1 is train_only.best_step is None
    assert runs.summarize([]) == runs.RunSummary()


def launches(*statuses) -> dict:
    return {"launches": [{"hostname": "h", "pid": 1, "exit_status": s} for s in statuses]}


@pytest.mark.parametrize(
    ("provenance", "state", "exit_status"),
    [
        (launches(None, 75), "preempted", 75),
        (launches(75, 130), "interrupted", 130),
        (launches(0, 1), "failed", 1),
        (launches(75, 0), "evaluated", 0),
        (launches(75, None), "stopped", None),
        ({"command": ["train.py"], "hostname": "h"}, "stopped", None),  # the first format
    ],
)
def test_state_from_the_last_launch(tmp_path, provenance, state, exit_status):
    (tmp_path / "provenance.json").write_text(json.dumps(provenance))
    status = runs.run_status(tmp_path)
    assert (status.state, status.exit_status) == (state, exit_status)
    assert str(status) == (f"failed (exit {exit_status})" if state == "failed" else state)


def test_done_running_stopped_not_started(tmp_path):
    assert runs.run_status(tmp_path).state == "not started"
    (tmp_path / "config.json").write_text("{}")
    assert runs.run_status(tmp_path).state == "not started"
    (tmp_path / "metrics.jsonl").write_text("")
    assert runs.run_status(tmp_path).state == "stopped"
    (tmp_path / "provenance.json").write_text(json.dumps(launches(None)))
    with WorkdirLock(tmp_path):
        status = runs.run_status(tmp_path)
        assert status.state == "running" and status.holder.alive
    (tmp_path / "done.json").write_text("{}")
    assert runs.run_status(tmp_path).state == "done"


def test_a_killed_holder_is_stopped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    lock.release()
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "pid": dead.pid}))
    (tmp_path / "provenance.json").write_text(json.dumps(launches(None)))
    status = runs.run_status(tmp_path)
    assert status.state == "stopped" and not status.holder.alive

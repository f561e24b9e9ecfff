"""A run directory read back: its metrics and their summary (placeholder until merged)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl, in step order (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return sorted(lines, key=lambda line: line.get("step", 0))


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Best/final eval top-1, the best step, steps and median train images/s of a run."""
    evals = [m for m in metrics if "eval/top1" in m]
    speeds = [m["train/images_per_sec"] for m in metrics if "train/images_per_sec" in m]
    best = max(evals, key=lambda m: m["eval/top1"], default=None)
    return {
        **(evals[-1] if evals else {}),
        "best_eval/top1": best["eval/top1"] if best else None,
        "best_step": best["step"] if best else None,
        "median_train/images_per_sec": statistics.median(speeds) if speeds else None,
    }

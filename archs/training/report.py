"""Compare runs: `python -m archs.training.report DIR`, DIR a sweep's --workdir or one run's.

Reads every run directory (one holding `config.json`, or listed by the sweep's `sweep.json`)
under DIR, or DIR itself when it is one,
in whatever state it is (done, running, preempted, interrupted, failed, stopped, not started:
archs.training.runs) with the metrics it has so far. Prints a markdown table of the settings
that differ between runs, each run's state, params and GMACs (archs.summary, at the run's image
size), best and final eval top-1/top-5 and the best step, steps, wall time and images/s, and,
when runs differ only by `seed`, a second table with mean +- std over seeds (of finished runs).
Writes DIR/report.csv (one row per run) and PNG plots: eval top-1 and train loss against step
(seed groups as a mean line with a min-max band), and final top-1 against params and GMACs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import operator
import os
import statistics
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from archs.cli_errors import ExitCode, first_line
from archs.training.runs import (
    CONFIG_NAME,
    METRICS_NAME,
    RunStatus,
    RunSummary,
    flatten,
    read_metrics,
    run_status,
    summarize,
    sweep_run_names,
)

SEED_KEY = "seed"
# Legend labels are wrapped at this many characters (the legend sits right of the axes).
_LABEL_WIDTH = 36


@dataclasses.dataclass
class RunResult:
    """One run: its settings, its state, what it measured, and its model's size."""

    name: str
    config: dict[str, Any]
    status: RunStatus
    summary: RunSummary
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    train_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    params: int | None = None
    gmacs: float | None = None


def load_run(run_dir: Path, with_cost: bool = True) -> RunResult:
    """The run in `run_dir`, whatever state it is in (with no settings before config.json)."""
    started = (run_dir / CONFIG_NAME).exists()
    config = _read_config(run_dir / CONFIG_NAME) if started else {}
    lines = sorted(read_metrics(run_dir / METRICS_NAME), key=lambda line: line["step"])
    result = RunResult(
        name=Path(os.path.abspath(run_dir)).name,  # "." named, symlinks not followed
        config=config,
        status=run_status(run_dir),
        summary=summarize(lines),
        curve=[(m["step"], m["eval/top1"]) for m in lines if "eval/top1" in m],
        train_curve=[(m["step"], m["train/loss"]) for m in lines if "train/loss" in m],
    )
    if with_cost:
        result.params, result.gmacs = _cost_of(config)
    return result


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"report: settings of {path.parent.name} unreadable: {error}", file=sys.stderr)
        return {}
    return flatten(config) if isinstance(config, dict) else {}


@functools.cache
def model_cost(model: str, kwargs_json: str, num_classes: int | None, image_size: int | None):
    """(params, GMACs) of `model` built with the JSON-encoded overrides, counted abstractly."""
    from archs import registry, summary

    kwargs = json.loads(kwargs_json)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    net = summary.abstract_model(model, **kwargs)
    size = image_size or registry.model_info(model).image_size
    return summary.count_params(net), summary.count_macs(net, size) / 1e9


def _cost_of(config: Mapping[str, Any]) -> tuple[int | None, float | None]:
    if "model" not in config:
        return None, None
    kwargs = {
        k[len("model_kwargs.") :]: list(v) if isinstance(v, tuple) else v
        for k, v in config.items()
        if k.startswith("model_kwargs.")
    }
    try:
        return model_cost(
            config["model"],
            json.dumps(kwargs, sort_keys=True),
            config.get("num_classes") or None,  # 0: the model's default
            config.get("image_size") or None,
        )
    except (ValueError, TypeError) as error:  # an unknown model or override: report the rest
        print(f"report: no params/GMACs for {config['model']}: {error}", file=sys.stderr)
        return None, None


def run_dirs(path: str | Path) -> list[Path]:
    """`path` itself when it is a run's workdir (it holds config.json), else the run
    directories under it (a sweep's --workdir): those holding config.json and those its
    sweep.json lists (which may not exist yet), sorted by name."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such directory: {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (give a sweep's or a run's workdir)")
    if (path / CONFIG_NAME).is_file():
        return [path]
    started = {config.parent for config in path.glob(f"*/{CONFIG_NAME}")}
    return sorted(started | {path / name for name in sweep_run_names(path)})


def load_runs(path: str | Path, with_cost: bool = True) -> list[RunResult]:
    """Every run of the sweep directory `path`, or the single run `path` is the workdir of."""
    return [load_run(run_dir, with_cost) for run_dir in run_dirs(path)]


def varied_keys(results: Sequence[RunResult]) -> list[str]:
    """Config keys whose values are not the same in every run that has settings (a missing
    key counts as None); runs not started yet have none (their names say their overrides)."""
    results = [r for r in results if r.config]
    keys = sorted({k for r in results for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in results}) > 1]


def group_by_seed(
    results: Sequence[RunResult], keys: Sequence[str]
) -> dict[tuple, list[RunResult]]:
    """Runs keyed by their varied settings other than the seed."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        key = tuple((k, r.config.get(k)) for k in keys if k != SEED_KEY)
        groups.setdefault(key, []).append(r)
    return groups


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "int":
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if kind == "" else f"{value:{kind}}"
    return str(value)


_METRICS = (
    ("state", "status", ""),
    ("params", "params", "int"),
    ("GMACs", "gmacs", ".4g"),
    ("best top-1 %", "summary.best_top1", "pct"),
    ("best step", "summary.best_step", "int"),
    ("final top-1 %", "summary.final_top1", "pct"),
    ("best top-5 %", "summary.best_top5", "pct"),
    ("final top-5 %", "summary.final_top5", "pct"),
    ("steps", "summary.steps", "int"),
    ("wall s", "summary.wall_s", ".0f"),
    ("images/s", "summary.images_per_sec", ".0f"),
)
# Shown when some run averaged its weights (ema_decay > 0).
_EMA_METRICS = (
    ("best EMA top-1 %", "summary.best_ema_top1", "pct"),
    ("final EMA top-1 %", "summary.final_ema_top1", "pct"),
)


def _metrics(results: Sequence[RunResult]) -> tuple[tuple[str, str, str], ...]:
    if any(r.summary.final_ema_top1 is not None for r in results):
        return _METRICS + _EMA_METRICS
    return _METRICS


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_table(results: Sequence[RunResult], keys: Sequence[str]) -> tuple[list[str], list[list]]:
    """Header and raw rows (one per run) for the CSV and the markdown table."""
    metrics = _metrics(results)
    header = ["run", *keys, *(label for label, _, _ in metrics)]
    getters = [operator.attrgetter(attr) for _, attr, _ in metrics]
    rows = [
        [r.name, *(r.config.get(k) for k in keys), *(get(r) for get in getters)] for r in results
    ]
    return header, rows


def runs_markdown(results: Sequence[RunResult], keys: Sequence[str]) -> str:
    """The per-run markdown table."""
    header, rows = run_table(results, keys)
    kinds = [""] * (1 + len(keys)) + [kind for _, _, kind in _metrics(results)]
    cells = [[_fmt(v, k) for v, k in zip(row, kinds, strict=True)] for row in rows]
    return _markdown(header, cells)


def _mean_std(values: Sequence[float | None], scale: float = 100.0) -> str:
    present = [scale * v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.2f}"
    return f"{statistics.mean(present):.2f} ± {statistics.stdev(present):.2f}"


def seed_markdown(groups: Mapping[tuple, Sequence[RunResult]]) -> str:
    """Mean ± sample std over seeds of each group's accuracies, over its finished runs only
    (`seeds` says how many of its runs are done when not all are)."""
    settings = [k for k, _ in next(iter(groups))]
    header = [*settings, "seeds", "params", "GMACs", "best top-1 %", "final top-1 %"]
    header += ["best top-5 %", "final top-5 %"]
    rows = []
    for key, runs in groups.items():
        first = runs[0]
        done = [r for r in runs if r.status.state == "done"]
        seeds = str(len(runs)) if len(done) == len(runs) else f"{len(done)} of {len(runs)} done"
        row = [_fmt(v) for _, v in key] + [seeds, _fmt(first.params, "int")]
        row.append(_fmt(first.gmacs, ".4g"))
        for attr in ("best_top1", "final_top1", "best_top5", "final_top5"):
            row.append(_mean_std([getattr(r.summary, attr) for r in done]))
        rows.append(row)
    return _markdown(header, rows)


def write_csv(path: Path, results: Sequence[RunResult], keys: Sequence[str]) -> None:
    """One row per run, raw values (fractions, not percentages)."""
    header, rows = run_table(results, keys)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def _label(key: tuple, runs: Sequence[RunResult]) -> str:
    """A group's legend label: its settings (wrapped), then the states of runs not done."""
    text = ", ".join(f"{k.removeprefix('model_kwargs.')}={_fmt(v)}" for k, v in key) or runs[0].name
    unfinished = sorted({str(r.status) for r in runs if r.status.state != "done"})
    if unfinished:
        text += f" [{', '.join(unfinished)}]"
    return textwrap.fill(text, _LABEL_WIDTH, break_on_hyphens=False)


def _finish_axes(ax, empty_text: str) -> None:
    """A legend right of the axes (long labels leave the plot its size), or a note when there
    is nothing to plot yet."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, empty_text, transform=ax.transAxes, ha="center", va="center")


def _plot_curves(groups, attr: str, scale: float, ylabel: str, path: Path) -> Path:
    """Each group's `attr` curve against step: the mean over seeds with a min-max band."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, runs in groups.items():
        curves = [getattr(r, attr) for r in runs if getattr(r, attr)]
        if not curves:
            continue
        # Seeds are compared at the steps every one of them logged.
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
        if not steps:
            continue
        values = np.array([[dict(c)[s] for s in steps] for c in curves]) * scale
        (line,) = ax.plot(steps, values.mean(0), marker=".", label=_label(key, runs))
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel=ylabel, title=f"{ylabel} (band: min-max over seeds)")
    _finish_axes(ax, f"no {ylabel} logged yet")
    return _save(fig, path)


def plot(groups: Mapping[tuple, Sequence[RunResult]], out_dir: Path) -> list[Path]:
    """top1_vs_step.png, train_loss_vs_step.png, top1_vs_params.png, top1_vs_gmacs.png; returns
    the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [
        _plot_curves(groups, "curve", 100.0, "eval top-1 %", out_dir / "top1_vs_step.png"),
        _plot_curves(groups, "train_curve", 1.0, "train loss", out_dir / "train_loss_vs_step.png"),
    ]
    for attr, label in (("params", "parameters"), ("gmacs", "GMACs")):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs = []
        for key, runs in groups.items():
            points = [(getattr(r, attr), r.summary.final_top1) for r in runs]
            points = [(x, 100 * y) for x, y in points if x is not None and y is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), label=_label(key, runs))
                xs += [x for x, _ in points]
        ax.set(xlabel=label, ylabel="final eval top-1 %")
        if xs and max(xs) >= 10 * min(xs) > 0:  # a log axis for sizes an order of magnitude apart
            ax.set_xscale("log")
        _finish_axes(ax, f"no run with {label} and an eval result yet")
        paths.append(_save(fig, out_dir / f"top1_vs_{attr}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def report(path: str | Path, *, plots: bool = True, with_cost: bool = True) -> str:
    """The markdown report of the sweep (or single run) in `path`; writes report.csv and the
    plots into `path`."""
    path = Path(path)
    results = load_runs(path, with_cost=with_cost)
    if not results:
        raise ValueError(f"no runs (directories with a {CONFIG_NAME}) in or under {path}")
    keys = varied_keys(results)
    write_csv(path / "report.csv", results, keys)
    text = runs_markdown(results, keys)
    groups = group_by_seed(results, keys)
    if SEED_KEY in keys and any(len(runs) > 1 for runs in groups.values()):
        text += "\n\nMean ± std over seeds:\n\n" + seed_markdown(groups)
    if plots:
        plot(groups, path)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a sweep's --workdir, or one run's workdir")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-cost", action="store_true", help="skip counting params and GMACs")
    args = parser.parse_args(argv)
    try:
        print(report(args.path, plots=not args.no_plots, with_cost=not args.no_cost))
    except ValueError as error:
        print(f"report: error: {first_line(error)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as error:  # e.g. a sweep directory one may read but not write
        print(f"report: error: {first_line(error)}", file=sys.stderr)
        return ExitCode.RUN_ERROR
    return ExitCode.COMPLETE


if __name__ == "__main__":
    sys.exit(main())

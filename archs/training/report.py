"""Compare the runs of a sweep: `python -m archs.training.report DIR`.

Reads every run directory under DIR (`config.json`, `metrics.jsonl`, `done.json`), prints a
markdown table of the settings that differ between runs, params and GMACs (archs.summary, at
the run's image size), best and final eval top-1/top-5, steps, wall time and images/s, and,
when runs differ only by `seed`, a second table with mean +- std over seeds. Writes
DIR/report.csv (one row per run) and PNG plots: eval top-1 and train loss against step (seed
groups as a mean line with a min-max band), and final top-1 against params and against GMACs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SEED_KEY = "seed"


@dataclasses.dataclass
class RunResult:
    """One run's settings and what it measured (fractions for accuracies, None when absent)."""

    name: str
    config: dict[str, Any]
    done: bool
    curve: list[tuple[int, float]]
    best_top1: float | None = None
    final_top1: float | None = None
    best_top5: float | None = None
    final_top5: float | None = None
    steps: int = 0
    wall_s: float | None = None
    images_per_sec: float | None = None
    params: int | None = None
    gmacs: float | None = None
    train_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}`.

    Lists become tuples, so values can be compared and hashed.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl, in step order (a torn last line is skipped)."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return sorted(lines, key=lambda line: line.get("step", 0))


def summarize_run(name: str, config: dict[str, Any], metrics: list[dict], done: bool) -> RunResult:
    """Best/final eval accuracy, steps, wall time and median throughput of one run."""
    evals = [m for m in metrics if "eval/top1" in m]
    top5 = [m["eval/top5"] for m in evals if "eval/top5" in m]
    walls = [m["train/wall_s"] for m in metrics if "train/wall_s" in m]
    speeds = [m["train/images_per_sec"] for m in metrics if "train/images_per_sec" in m]
    return RunResult(
        name=name,
        config=config,
        done=done,
        curve=[(m["step"], m["eval/top1"]) for m in evals],
        best_top1=max((m["eval/top1"] for m in evals), default=None),
        final_top1=evals[-1]["eval/top1"] if evals else None,
        best_top5=max(top5, default=None),
        final_top5=top5[-1] if top5 else None,
        steps=max((m.get("step", 0) for m in metrics), default=0),
        wall_s=max(walls, default=None),
        images_per_sec=statistics.median(speeds) if speeds else None,
        train_curve=[(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m],
    )


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
    except ValueError as error:  # an unknown model or override: report the rest of the run
        print(f"report: no params/GMACs for {config['model']}: {error}", file=sys.stderr)
        return None, None


def load_runs(sweep_dir: str | Path, with_cost: bool = True) -> list[RunResult]:
    """Every run directory (one holding config.json) under `sweep_dir`, sorted by name."""
    results = []
    for config_path in sorted(Path(sweep_dir).glob("*/config.json")):
        run_dir = config_path.parent
        config = flatten(json.loads(config_path.read_text()))
        result = summarize_run(
            run_dir.name,
            config,
            read_metrics(run_dir / "metrics.jsonl"),
            (run_dir / "done.json").exists(),
        )
        if with_cost:
            result.params, result.gmacs = _cost_of(config)
        results.append(result)
    return results


def varied_keys(results: Sequence[RunResult]) -> list[str]:
    """Config keys whose values are not the same in every run (a missing key counts as None)."""
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
    ("params", "params", "int"),
    ("GMACs", "gmacs", ".4g"),
    ("best top-1 %", "best_top1", "pct"),
    ("final top-1 %", "final_top1", "pct"),
    ("best top-5 %", "best_top5", "pct"),
    ("final top-5 %", "final_top5", "pct"),
    ("steps", "steps", "int"),
    ("wall s", "wall_s", ".0f"),
    ("images/s", "images_per_sec", ".0f"),
)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_table(results: Sequence[RunResult], keys: Sequence[str]) -> tuple[list[str], list[list]]:
    """Header and raw rows (one per run) for the CSV and the markdown table."""
    header = ["run", *keys, *(label for label, _, _ in _METRICS), "done"]
    rows = [
        [r.name, *(r.config.get(k) for k in keys), *(getattr(r, a) for _, a, _ in _METRICS), r.done]
        for r in results
    ]
    return header, rows


def runs_markdown(results: Sequence[RunResult], keys: Sequence[str]) -> str:
    """The per-run markdown table."""
    header, rows = run_table(results, keys)
    kinds = [""] * (1 + len(keys)) + [kind for _, _, kind in _METRICS] + [""]
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
    """Mean ± sample std over seeds of each group's accuracies."""
    settings = [k for k, _ in next(iter(groups))]
    header = [*settings, "seeds", "params", "GMACs", "best top-1 %", "final top-1 %"]
    header += ["best top-5 %", "final top-5 %"]
    rows = []
    for key, runs in groups.items():
        first = runs[0]
        row = [_fmt(v) for _, v in key] + [str(len(runs)), _fmt(first.params, "int")]
        row.append(_fmt(first.gmacs, ".4g"))
        for attr in ("best_top1", "final_top1", "best_top5", "final_top5"):
            row.append(_mean_std([getattr(r, attr) for r in runs]))
        rows.append(row)
    return _markdown(header, rows)


def write_csv(path: Path, results: Sequence[RunResult], keys: Sequence[str]) -> None:
    """One row per run, raw values (fractions, not percentages)."""
    header, rows = run_table(results, keys)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def _label(key: tuple) -> str:
    return ",".join(f"{k.removeprefix('model_kwargs.')}={v}" for k, v in key) or "run"


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
        values = np.array([[dict(c)[s] for s in steps] for c in curves]) * scale
        (line,) = ax.plot(steps, values.mean(0), marker=".", label=_label(key))
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel=ylabel, title=f"{ylabel} (band: min-max over seeds)")
    ax.legend(fontsize="small")
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
        for key, runs in groups.items():
            points = [(getattr(r, attr), 100 * r.final_top1) for r in runs]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), label=_label(key))
        ax.set(xlabel=label, ylabel="final eval top-1 %", xscale="log")
        ax.legend(fontsize="small")
        paths.append(_save(fig, out_dir / f"top1_vs_{attr}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(sweep_dir: str | Path, *, plots: bool = True, with_cost: bool = True) -> str:
    """The markdown report of `sweep_dir`; writes report.csv and the plots beside the runs."""
    sweep_dir = Path(sweep_dir)
    results = load_runs(sweep_dir, with_cost=with_cost)
    if not results:
        raise ValueError(f"no runs (directories with a config.json) under {sweep_dir}")
    keys = varied_keys(results)
    write_csv(sweep_dir / "report.csv", results, keys)
    text = runs_markdown(results, keys)
    groups = group_by_seed(results, keys)
    if SEED_KEY in keys and any(len(runs) > 1 for runs in groups.values()):
        text += "\n\nMean ± std over seeds:\n\n" + seed_markdown(groups)
    if plots:
        plot(groups, sweep_dir)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep's --workdir")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-cost", action="store_true", help="skip counting params and GMACs")
    args = parser.parse_args(argv)
    try:
        print(report(args.sweep_dir, plots=not args.no_plots, with_cost=not args.no_cost))
    except ValueError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

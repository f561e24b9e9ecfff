"""The sweep report on synthetic sweep directories (config.json, metrics.jsonl, done.json,
provenance.json, the workdir lock per run): finished sweeps, partial ones, a single run.

Params and GMACs go through the real registry and archs.summary with a tiny registered net whose
counts are worked out by hand below.
"""

import csv
import json
from pathlib import Path

import pytest
from flax import nnx

from archs import registry
from archs.classifier import Classifier
from archs.convolution import LAX, ConvImpl
from archs.training import report
from archs.training.runs import RunStatus, RunSummary
from archs.training.workdir import WorkdirLock

TINY = "report_test_tiny"


class _Tiny(Classifier):
    def __init__(self, *, num_classes: int, rngs: nnx.Rngs, conv: ConvImpl, width: int):
        self.conv = nnx.Conv(
            3, width, (3, 3), padding=1, conv_general_dilated=conv.outside_scan, rngs=rngs
        )
        self.fc = nnx.Linear(width, num_classes, rngs=rngs)

    def forward_features(self, x):
        return {"pre_logits": self.conv(x).mean(axis=(1, 2))}

    def head(self, pre_logits):
        return self.fc(pre_logits)


def _tiny(
    *, num_classes: int, rngs: nnx.Rngs, dtype=None, conv: ConvImpl = LAX, width: int = 4
) -> _Tiny:
    return _Tiny(num_classes=num_classes, rngs=rngs, conv=conv, width=width)


if TINY not in registry.list_models():
    registry.register(
        TINY,
        _tiny,
        family="test",
        preprocessing=registry.Preprocessing(image_size=8),
        num_classes=10,
    )


def tiny_cost(width: int) -> tuple[int, float]:
    """3x3 conv 3->width with bias, linear width->10 with bias, at 8x8 with 'same' padding."""
    params = 27 * width + width + 10 * width + 10
    macs = 8 * 8 * width * 27 + width * 10
    return params, macs / 1e9


# width -> seed -> eval top-1 at steps 100 and 200.
CURVES = {4: {0: (0.40, 0.60), 1: (0.50, 0.70)}, 8: {0: (0.55, 0.80), 1: (0.90, 0.85)}}


def write_run(root: Path, name: str, config: dict, lines: list[dict], done: bool = True) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if done:
        (run / "done.json").write_text(json.dumps(lines[-1]))


@pytest.fixture
def sweep_dir(tmp_path):
    for width, seeds in CURVES.items():
        for seed, (top1_a, top1_b) in seeds.items():
            config = {"model": TINY, "model_kwargs": {"width": width}, "seed": seed}
            config |= {"batch_size": 128, "dataset": "cifar10"}
            lines = [
                {"step": 50, "train/loss": 2.0, "train/images_per_sec": 100.0, "train/wall_s": 5},
                {"step": 100, "eval/loss": 1.0, "eval/top1": top1_a, "eval/top5": 0.9},
                {"step": 150, "train/loss": 1.0, "train/images_per_sec": 300.0, "train/wall_s": 9},
                {"step": 200, "eval/loss": 0.5, "eval/top1": top1_b, "eval/top5": 0.95},
            ]
            write_run(tmp_path, f"width={width},seed={seed}", config, lines)
    return tmp_path


def test_report_table_csv_and_seed_groups(sweep_dir):
    report.model_cost.cache_clear()
    text = report.report(sweep_dir, plots=False)
    assert report.model_cost.cache_info().misses == 2  # one count per (model, kwargs)
    runs_table, grouped = text.split("Mean ± std over seeds:")
    header = runs_table.splitlines()[0]
    assert "model_kwargs.width" in header and "seed" in header
    assert "batch_size" not in header and "dataset" not in header  # the same in every run
    row = next(line for line in runs_table.splitlines() if line.startswith("| width=8,seed=1 "))
    params, gmacs = tiny_cost(8)
    # width, seed, state, params, GMACs, best top-1, best step, final top-1, best/final top-5,
    # steps, wall, images/s
    assert row.strip("| ").split(" | ")[1:] == [
        "8", "1", "done", f"{params:,}", f"{gmacs:.4g}", "90.00", "100", "85.00", "95.00", "95.00",
        "200", "9", "200",
    ]  # fmt: skip
    group = next(line for line in grouped.splitlines() if line.startswith("| 4 |"))
    # width 4: final top-1 60 and 70 -> mean 65.00, sample std 7.07.
    assert "| 2 |" in group and "65.00 ± 7.07" in group

    with (sweep_dir / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    first = rows[0]
    assert first["run"] == "width=4,seed=0" and first["final top-1 %"] == "0.6"
    assert first["state"] == "done" and first["best step"] == "200"
    assert int(first["params"]) == tiny_cost(4)[0]
    assert float(first["GMACs"]) == pytest.approx(tiny_cost(4)[1])


def test_report_writes_plots(sweep_dir):
    report.report(sweep_dir)
    for name in (
        "top1_vs_step.png",
        "train_loss_vs_step.png",
        "top1_vs_params.png",
        "top1_vs_gmacs.png",
    ):
        data = (sweep_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_unfinished_run_torn_line_and_unknown_model(tmp_path, capsys):
    write_run(tmp_path, "a", {"model": "no_such_net", "seed": 0}, [{"step": 1}], done=False)
    (tmp_path / "a" / "metrics.jsonl").open("a").write('{"step": 2, "eval/to')
    write_run(tmp_path, "b", {"model": TINY, "seed": 0}, [{"step": 3, "eval/top1": 0.5}])
    results = {r.name: r for r in report.load_runs(tmp_path)}
    assert results["a"].status.state == "stopped" and results["a"].summary.steps == 1
    assert results["a"].params is None and "no_such_net" in capsys.readouterr().err
    assert results["b"].status.state == "done" and results["b"].params == tiny_cost(4)[0]
    assert report.varied_keys(list(results.values())) == ["model"]


def test_varied_keys_count_a_missing_key_as_different():
    done, summary = RunStatus("done"), RunSummary()
    runs = [
        report.RunResult("a", {"lr": 0.1, "seed": 0}, done, summary),
        report.RunResult("b", {"lr": 0.1, "seed": 0, "model_kwargs.se": 8}, done, summary),
    ]
    assert report.varied_keys(runs) == ["model_kwargs.se"]
    flat = report.flatten({"m": {"a": 1, "b": [1, [2]]}, "e": {}, "d": [{"x": 1}]})
    assert flat == {"m.a": 1, "m.b": (1, (2,)), "d": ((("x", 1),),)}  # hashable, no empty dicts


def test_cli(sweep_dir, tmp_path, capsys):
    assert report.main([str(sweep_dir), "--no-plots"]) == 0
    assert "| width=4,seed=0 |" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for path, says in (
        (empty, "no runs"),
        (tmp_path / "missing", "no such directory"),
        (a_file, "is not a directory"),
    ):
        assert report.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err


PLOTS = ("top1_vs_step.png", "train_loss_vs_step.png", "top1_vs_params.png", "top1_vs_gmacs.png")


def launches(*statuses) -> str:
    return json.dumps(
        {"launches": [{"hostname": "h", "pid": 1, "exit_status": s} for s in statuses]}
    )


@pytest.fixture
def partial_sweep(tmp_path):
    """A sweep caught midway: one run of each state, and metrics files of every shape."""
    train_line = {"step": 10, "train/loss": 2.0, "train/images_per_sec": 50.0, "train/wall_s": 3}
    eval_line = {"step": 20, "eval/loss": 1.5, "eval/top1": 0.3, "eval/top5": 0.7}
    configs = {w: {"model": TINY, "model_kwargs": {"width": w}} for w in range(4, 11)}
    write_run(tmp_path, "done", configs[4], [train_line, eval_line])
    write_run(tmp_path, "train_only", configs[5], [train_line], done=False)
    (tmp_path / "train_only" / "metrics.jsonl").open("a").write('{"step": 11, "train/lo')
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text(json.dumps(configs[6]))
    write_run(tmp_path, "failed", configs[7], [], done=False)  # an empty metrics.jsonl
    (tmp_path / "failed" / "provenance.json").write_text(launches(1))
    write_run(tmp_path, "preempted", configs[8], [train_line], done=False)
    (tmp_path / "preempted" / "provenance.json").write_text(launches(None, 75))
    write_run(tmp_path, "interrupted", configs[9], [train_line, eval_line], done=False)
    (tmp_path / "interrupted" / "provenance.json").write_text(launches(130))
    write_run(tmp_path, "running", configs[10], [train_line], done=False)
    (tmp_path / "running" / "provenance.json").write_text(launches(None))
    with WorkdirLock(tmp_path / "running"):  # this test process is the live holder
        yield tmp_path


STATES = {
    "done": "done",
    "train_only": "stopped",
    "config_only": "not started",
    "failed": "failed (exit 1)",
    "preempted": "preempted",
    "interrupted": "interrupted",
    "running": "running",
}


def test_partial_sweep_reports_every_run_in_its_state(partial_sweep, capsys):
    assert report.main([str(partial_sweep)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split(" | ")
    state_column = header.index("state")
    for name, state in STATES.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[state_column] == state, row
    with (partial_sweep / "report.csv").open() as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert {name: row["state"] for name, row in rows.items()} == STATES
    assert rows["train_only"]["steps"] == "10" and rows["train_only"]["final top-1 %"] == ""
    assert rows["interrupted"]["best top-1 %"] == "0.3"
    for name in PLOTS:
        assert (partial_sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_partial_sweep_with_nothing_to_plot(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model": TINY, "seed": 0}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"model": TINY, "seed": 1}))
    text = report.report(tmp_path)
    assert text.count("| not started |") == 2
    for name in PLOTS:
        assert (tmp_path / name).exists(), name


def test_single_run_workdir(sweep_dir, capsys):
    run = sweep_dir / "width=8,seed=1"
    assert report.main([str(run), "--no-cost"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[2].startswith("| width=8,seed=1 | done | ")
    assert (run / "report.csv").exists() and (run / "top1_vs_step.png").exists()


def test_legend_labels_are_the_varied_settings_wrapped(sweep_dir):
    runs = [report.load_run(p, with_cost=False) for p in sorted(sweep_dir.glob("width=4,*"))]
    key = (("model_kwargs.width", 4), ("optimizer_and_schedule", "x" * 50))
    label = report._label(key, runs)
    assert label.startswith("width=4, optimizer_and_schedule=")
    assert max(len(line) for line in label.splitlines()) <= report._LABEL_WIDTH
    interrupted = report.RunResult("c", {}, RunStatus("interrupted"), RunSummary())
    assert report._label((("lr", 0.1),), [*runs, interrupted]) == "lr=0.1 [interrupted]"


def test_seed_means_count_finished_runs_only(sweep_dir):
    (sweep_dir / "width=8,seed=1" / "done.json").unlink()  # stopped at step 200
    _, grouped = report.report(sweep_dir, plots=False).split("Mean ± std over seeds:")
    group = next(line for line in grouped.splitlines() if line.startswith("| 8 |"))
    # Only seed 0 is done: its best and final top-1 are 80.00 (seed 1 would make them 85 and 82.5).
    assert "| 1 of 2 done |" in group and "| 80.00 | 80.00 |" in group


def test_ema_columns_appear_when_a_run_averaged_its_weights(tmp_path):
    evals = [(100, 0.5, 0.4), (200, 0.6, 0.7)]  # step, top-1, EMA top-1
    lines = [{"step": s, "eval/top1": a, "eval/top5": 0.9, "eval/ema_top1": e} for s, a, e in evals]
    write_run(tmp_path, "ema=0.99", {"model": TINY, "ema_decay": 0.99}, lines)
    write_run(
        tmp_path, "ema=0", {"model": TINY, "ema_decay": 0.0}, [{"step": 200, "eval/top1": 0.5}]
    )
    header, *rows = report.report(tmp_path, plots=False, with_cost=False).splitlines()
    assert header.endswith("| best EMA top-1 % | final EMA top-1 % |")
    assert rows[-1].endswith("| 70.00 | 70.00 |") and rows[-2].endswith("| - | - |")
    assert "EMA" not in report.report(tmp_path / "ema=0", plots=False, with_cost=False)


def test_runs_a_sweep_lists_are_reported_before_they_start(sweep_dir, capsys):
    """A sweep stopped early: the runs its sweep.json lists that left nothing (never launched,
    or stopped while importing) are rows too, not started."""
    from archs.training.sweep import expand, write_sweep_list

    names = [p.name for p in sweep_dir.iterdir()] + ["width=16,seed=0", "width=16,seed=1"]
    runs = expand("c.py", [dict(n.split("=") for n in name.split(",")) for name in names], "x")
    write_sweep_list(sweep_dir, runs)
    (sweep_dir / "width=16,seed=0").mkdir()
    (sweep_dir / "width=16,seed=0" / "train.log").write_text("KeyboardInterrupt\n")
    assert report.main([str(sweep_dir), "--no-plots", "--no-cost"]) == 0
    table = capsys.readouterr().out
    for name in ("width=16,seed=0", "width=16,seed=1"):
        assert f"| {name} | - | - | not started |" in table, table
    assert table.count("| done |") == 4

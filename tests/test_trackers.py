"""Experiment trackers: MLflow against a local file store, W&B offline; real libraries, no
network. The logged scalars, parameters and artifact read back as written, and a second open
of the same workdir continues the same tracker run.

W&B (0.31 here) keeps an offline run in a `.wandb` transaction log that only its Go
service reads; the Python package ships the records' protobuf schema but no longer a reader
of the log's framing (LevelDB's log format: 32 KiB blocks of chunks with a 7-byte header).
`read_wandb_run` decodes that framing and parses every record with W&B's own schema.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from archs.training import base_config, trackers
from archs.training.config import check_config
from archs.training.errors import ConfigError

CONFIG = {"model": "resnet20", "batch_size": 128, "model_kwargs": {"shortcut": "A"}}
SCALARS = {1: {"train/loss": 2.5, "train/top1": 0.125}, 2: {"train/loss": 2.25, "eval/top1": 0.5}}


def _workdir(tmp_path: Path) -> Path:
    workdir = tmp_path / "run-a"
    workdir.mkdir()
    (workdir / "provenance.json").write_text(json.dumps({"launches": [{"git_commit": "abc"}]}))
    return workdir


def _log(writers, steps: dict) -> None:
    for step, values in steps.items():
        for writer in writers:
            writer.write_scalars(step, values)
    for writer in writers:
        writer.flush()
        writer.close()


def test_mlflow_logs_scalars_params_and_provenance_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
    workdir = _workdir(tmp_path)
    writers = trackers.open_trackers(("tensorboard", "mlflow"), str(workdir), CONFIG)
    assert [type(w) for w in writers] == [trackers.MlflowWriter]
    run_id = writers[0].run_id
    _log(writers, SCALARS)
    resumed = trackers.open_trackers(("mlflow",), str(workdir), {**CONFIG, "batch_size": 64})
    assert resumed[0].run_id == run_id
    _log(resumed, {3: {"train/loss": 2.0}})

    client = MlflowClient()
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(history) == [(1, 2.5), (2, 2.25), (3, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/top1")] == [(2, 0.5)]
    run = client.get_run(run_id)
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    # The first value of a changed parameter stays (MLflow refuses changes).
    assert run.data.params == {
        "model": "resnet20",
        "batch_size": "128",
        "model_kwargs.shortcut": "A",
    }
    assert [a.path for a in client.list_artifacts(run_id)] == ["provenance.json"]
    assert json.loads((workdir / "trackers.json").read_text()) == {"mlflow": run_id}


WANDB_BLOCK, WANDB_HEADER = 32768, 7


def read_wandb_run(path: Path) -> list:
    """The records of an offline `.wandb` file, parsed with W&B's protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, pos = [], [], WANDB_HEADER
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a header
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE.../LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def _wandb_history(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            # Keys holding '/' are stored split into `nested_key`.
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


@pytest.mark.slow
def test_wandb_offline_logs_scalars_config_and_provenance_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    workdir = _workdir(tmp_path)
    writers = trackers.open_trackers(("wandb",), str(workdir), CONFIG)
    run_id = writers[0].run_id
    _log(writers, SCALARS)
    resumed = trackers.open_trackers(("wandb",), str(workdir), CONFIG)
    assert resumed[0].run_id == run_id
    _log(resumed, {3: {"train/loss": 2.0}})

    files = sorted(
        (tmp_path / "wandb-dir").glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    )
    assert len(files) == 2  # one per launch, both of the same run id (`wandb sync` joins them)
    first, second = (read_wandb_run(f) for f in files)
    assert _wandb_history(first) == [{"step": s, **v} for s, v in SCALARS.items()]
    assert _wandb_history(second) == [{"step": 3, "train/loss": 2.0}]
    run = next(r.run for r in first if r.WhichOneof("record_type") == "run")
    assert run.run_id == run_id and run.display_name == "run-a"
    config = {
        i.key: json.loads(i.value_json)
        for r in first
        if r.WhichOneof("record_type") == "config"
        for i in r.config.update
    }
    assert {k: config[k] for k in ("model", "batch_size", "model_kwargs.shortcut")} == {
        "model": "resnet20",
        "batch_size": 128,
        "model_kwargs.shortcut": "A",
    }
    artifacts = [r.artifact for r in first if r.WhichOneof("record_type") == "artifact"]
    assert [(a.type, [m.path for m in a.manifest.contents]) for a in artifacts] == [
        ("provenance", ["provenance.json"])
    ]


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers.jax, "process_index", lambda: 1)
    assert trackers.open_trackers(("mlflow", "wandb"), str(tmp_path), CONFIG) == []
    assert not (tmp_path / "trackers.json").exists()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_extra_is_a_one_line_config_error(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    c = base_config()
    c.writers = ("tensorboard", name)
    message = rf"writers: '{name}' needs the '{name}' package: pip install -e \"\.\[{name}\]\""
    with pytest.raises(ConfigError, match=message):
        check_config(c)
    with pytest.raises(ConfigError, match=message):
        trackers.open_trackers((name,), str(tmp_path), CONFIG)


@pytest.mark.slow
def test_a_training_run_logs_to_mlflow_and_wandb_what_metrics_jsonl_holds(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow import MlflowClient
    from training_support import lines, run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    run(workdir, writers=("tensorboard", "mlflow", "wandb"), num_train_steps=4, eval_every_steps=2)
    expected = {}  # (metric, step) -> value, from metrics.jsonl
    for record in lines(workdir):
        expected.update({(k, record["step"]): v for k, v in record.items() if k != "step"})
    ids = json.loads((workdir / "trackers.json").read_text())

    client = MlflowClient()
    logged = {
        (name, m.step): m.value
        for name in {name for name, _ in expected}
        for m in client.get_metric_history(ids["mlflow"], name)
    }
    assert logged == expected
    assert client.get_run(ids["mlflow"]).data.params["num_train_steps"] == "4"

    (path,) = tmp_path.glob(f"wandb/offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb")
    history = _wandb_history(read_wandb_run(path))
    assert {(k, row["step"]): v for row in history for k, v in row.items() if k != "step"} == (
        expected
    )

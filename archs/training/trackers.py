"""Experiment trackers behind clu's `MetricWriter` interface: MLflow and Weights & Biases.

`open_trackers(config.writers, workdir, config)` returns one writer per tracker named in
`writers` ('tensorboard' is the loop's own writer and is skipped here), each logging the
scalars it is given, the config as parameters (flattened, dotted keys) and the workdir's
`provenance.json` as an artifact. Only process 0 gets writers. Each tracker's run id is kept
in `<workdir>/trackers.json`, so a resumed run continues the same tracker run; a resume
re-logs the steps past the restored checkpoint, so a tracker may hold two values for such a
step (metrics.jsonl keeps one).

The trackers are configured by their own environment variables: MLflow by
`MLFLOW_TRACKING_URI` (its default is `sqlite:///mlflow.db` in the working directory) and
`MLFLOW_EXPERIMENT_NAME` (default 'Default'); W&B by `WANDB_PROJECT` (default 'archs'),
`WANDB_ENTITY`, `WANDB_MODE` ('offline' writes only local files) and `WANDB_DIR` (default: the
workdir). Runs are named after the workdir. Texts, images, videos, audio, histograms and raw
summaries are not sent to trackers (the loop writes scalars only; TensorBoard gets them).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import logging
from clu.metric_writers import interface

from archs.training.config import WRITERS, require_writer
from archs.training.runs import PROVENANCE_NAME, flatten

TRACKERS_FILE = "trackers.json"
WANDB_DEFAULT_PROJECT = "archs"


def _import(name: str) -> Any:
    """The tracker's package; ConfigError naming the extra that installs it when missing."""
    require_writer(name)
    return importlib.import_module(WRITERS[name])


class _RunIds:
    """`<workdir>/trackers.json`: the tracker run of each writer name."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, TRACKERS_FILE)

    def read(self) -> dict[str, str]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path) as f:
            return json.load(f)

    def get(self, name: str) -> str | None:
        return self.read().get(name)

    def put(self, name: str, run_id: str) -> None:
        ids = {**self.read(), name: run_id}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(ids, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)


class _TrackerWriter(interface.MetricWriter):
    """What the two trackers share: the kinds of data they leave to TensorBoard."""

    def _unsupported(self, kind: str) -> None:
        logging.log_first_n(logging.WARNING, "%s does not record %s", 1, type(self).__name__, kind)

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata: Any = None):
        self._unsupported("summaries")

    def write_texts(self, step: int, texts: Mapping[str, str]):
        self._unsupported("texts")

    def write_images(self, step: int, images: Mapping[str, Any]):
        self._unsupported("images")

    def write_videos(self, step: int, videos: Mapping[str, Any]):
        self._unsupported("videos")

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
        self._unsupported("audios")

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets: Any = None):
        self._unsupported("histograms")


class MlflowWriter(_TrackerWriter):
    """Scalars as MLflow metrics, hparams as parameters, files as artifacts."""

    def __init__(self, workdir: str, run_id: str | None = None):
        mlflow = _import("mlflow")
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.exceptions import MlflowException

        self._metric, self._param = Metric, Param
        self.client = mlflow.MlflowClient()
        run = None
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                logging.warning(
                    "MLflow run %s is not in %s; starting a new one",
                    run_id,
                    self.client.tracking_uri,
                )
        if run is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(name)
            )
            run = self.client.create_run(experiment_id, run_name=_run_name(workdir))
        else:
            self.client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.run_id = run.info.run_id

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        now = int(time.time() * 1000)
        metrics = [self._metric(key, float(v), now, int(step)) for key, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def write_hparams(self, hparams: Mapping[str, Any]):
        """Parameters not logged yet (MLflow refuses to change a logged value: a changed config
        on resume keeps the first value here, and config.json has the current one)."""
        logged = self.client.get_run(self.run_id).data.params
        new = {k: str(v) for k, v in flatten(hparams).items()}
        changed = sorted(k for k, v in new.items() if k in logged and logged[k] != v)
        if changed:
            logging.warning("MLflow keeps the first values of changed parameters: %s", changed)
        params = [self._param(k, v) for k, v in new.items() if k not in logged]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def flush(self):
        pass  # every call above is written when it returns

    def close(self):
        self.client.set_terminated(self.run_id)


class WandbWriter(_TrackerWriter):
    """Scalars as W&B history (x-axis `step`), hparams as config, files as artifacts."""

    def __init__(self, workdir: str, run_id: str | None = None):
        wandb = _import("wandb")
        self._wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", WANDB_DEFAULT_PROJECT),
            name=_run_name(workdir),
            id=run_id,  # None: W&B makes one
            resume="allow",
            dir=os.environ.get("WANDB_DIR", workdir),
        )
        # Our own step as the x-axis: W&B's internal step must only grow, which a resume from
        # an earlier checkpoint breaks.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = self.run.id

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        self.run.log({"step": int(step), **{k: float(v) for k, v in scalars.items()}})

    def write_hparams(self, hparams: Mapping[str, Any]):
        self.run.config.update(flatten(hparams), allow_val_change=True)

    def log_artifact(self, path: str) -> None:
        name = os.path.splitext(os.path.basename(path))[0]
        artifact = self._wandb.Artifact(f"{name}-{self.run_id}", type=name)
        artifact.add_file(path)
        self.run.log_artifact(artifact)

    def flush(self):
        pass  # wandb streams what it is given

    def close(self):
        self.run.finish()


TRACKERS = {"mlflow": MlflowWriter, "wandb": WandbWriter}


def _run_name(workdir: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(workdir)))


def open_trackers(
    writers: Sequence[str], workdir: str, config: Mapping[str, Any]
) -> list[interface.MetricWriter]:
    """Writers for the trackers in `writers`, on process 0 (none elsewhere), each resuming
    the run recorded in `<workdir>/trackers.json` or starting one (and recording it), with
    `config` logged as parameters and `<workdir>/provenance.json` (if written) as an artifact.
    """
    if jax.process_index() != 0:
        return []
    ids = _RunIds(workdir)
    opened = []
    for name in writers:
        if name not in TRACKERS:
            continue
        writer = TRACKERS[name](workdir, ids.get(name))
        ids.put(name, writer.run_id)
        writer.write_hparams(config)
        provenance = os.path.join(workdir, PROVENANCE_NAME)
        if os.path.exists(provenance):
            writer.log_artifact(provenance)
        opened.append(writer)
    return opened

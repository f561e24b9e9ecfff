"""Scaling and surviving: strategies on 8 CPU devices, two processes, gradient accumulation,
SIGTERM, damaged checkpoints, non-finite losses, a full disk, and the bad-input catalogue.

Device counts and processes need fresh interpreters (XLA_FLAGS is read once), so those runs are
subprocesses of training_support.py; the rest runs in process on the tiny model.

Tolerances: runs that differ only in how the same float32 arithmetic is split over devices,
processes or micro-batches (different reduction orders) agree to RTOL = 1e-4 per step; the
observed differences are about 1e-6.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing.plugin_event_accumulator import (
    TENSORS,
    EventAccumulator,
)
from training_support import (
    ROOT,
    SMALL,
    _tiny,
    cli,
    device_count_env,
    final_model,
    lines,
    mock_datasets,
    run,
    small_config,
    tree_digest,
)

import archs
from archs.registry import Preprocessing, register

RTOL = 1e-4


def assert_same_losses(ours, theirs, keys=("train/loss", "eval/loss", "eval/top1")):
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in keys:
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=RTOL, err_msg=f"{key} {x['step']}")


def runs_in_subprocess(devices: int, runs: dict[Path, dict]) -> None:
    """`run(workdir, **overrides)` for each entry, in one interpreter with `devices` devices."""
    code = (
        "import json, sys, ml_collections\n"
        "from training_support import run\n"
        "for workdir, overrides in json.loads(sys.argv[1]):\n"
        "    if 'model_kwargs' in overrides:\n"
        "        overrides['model_kwargs'] = ml_collections.ConfigDict(overrides['model_kwargs'])\n"
        "    run(workdir, **overrides)\n"
    )
    spec = json.dumps([[str(w), o] for w, o in runs.items()])
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        **device_count_env(devices),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, spec],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """The CLI's run on one process with 8 devices."""
    workdir = tmp_path_factory.mktemp("eight") / "w"
    proc = cli(workdir, *SMALL, env=device_count_env(8))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return workdir


@pytest.mark.slow
def test_eight_devices_match_one_device(baseline, eight_devices):
    """Sync BatchNorm over the global batch: 8 devices compute what 1 device does."""
    (launch,) = json.loads((eight_devices / "provenance.json").read_text())["launches"]
    assert launch["device_count"] == 8
    assert_same_losses(lines(eight_devices), lines(baseline))


@pytest.mark.slow
def test_accumulating_two_micro_batches_is_batchnorm_on_two_devices(tmp_path):
    """Each micro-batch / device normalises with its own statistics, so the train losses agree;
    running statistics are updated per micro-batch vs averaged over devices, so evals differ."""
    runs_in_subprocess(2, {tmp_path / "two_devices": {"bn_mode": "per_device"}})
    run(tmp_path / "accum2", grad_accum_steps=2)
    assert_same_losses(lines(tmp_path / "accum2"), lines(tmp_path / "two_devices"), ("train/loss",))


@pytest.mark.slow
def test_accumulation_without_batchnorm_is_the_whole_batch(tmp_path):
    no_norm = ml_collections.ConfigDict({"norm": False, "drop_rate": 0.0})
    run(tmp_path / "whole", model_kwargs=no_norm)
    run(tmp_path / "accum4", model_kwargs=no_norm, grad_accum_steps=4)
    assert_same_losses(lines(tmp_path / "accum4"), lines(tmp_path / "whole"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stop_together_on_sigterm_and_resume_to_the_run_of_one(
    eight_devices, tmp_path
):
    """SIGTERM reaches JAX's preemption sync point: both processes save the same step and exit
    75; relaunched, they finish the run that one process with all 8 devices trains, and that
    checkpoint resumes in this (single, 1-device) process."""
    workdir = tmp_path / "w"
    procs = _two_processes(workdir, *SMALL, env={"TINY_STEP_SLEEP": "0.5"})
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists() or len(lines(workdir)) < 2:
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.2)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 75, err[-2000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(saved) == max(r["step"] for r in lines(workdir)) < 20

    for proc in _two_processes(workdir, *SMALL):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    launches = json.loads((workdir / "provenance.json").read_text())["launches"]
    assert [(x["process_count"], x["device_count"]) for x in launches] == [(2, 8), (2, 8)]
    assert [x["exit_status"] for x in launches] == [75, 0]
    assert sorted(p.name for p in workdir.glob("metrics*")) == ["metrics.jsonl"]
    assert_same_losses(lines(workdir), lines(eight_devices))
    from archs.training import COMPLETE, train_and_evaluate

    with mock_datasets():
        status = train_and_evaluate(small_config(num_train_steps=24), str(workdir))
    assert status == COMPLETE
    steps = [r["step"] for r in lines(workdir) if "train/loss" in r]
    assert steps == list(range(1, 25))


def _two_processes(workdir: Path, *overrides: str, env: dict | None = None):
    port = _free_port()
    return [
        cli(
            workdir,
            *overrides,
            env={**device_count_env(4), **(env or {})},
            flags=(
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_checkpoint_from_eight_devices_resumes_on_one(baseline, eight_devices, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(eight_devices, workdir)
    for step_dir in (workdir / "checkpoints").iterdir():
        if int(step_dir.name) > 10:
            shutil.rmtree(step_dir)
    assert (workdir / "checkpoints" / "10").is_dir()
    from archs.training import train_and_evaluate

    with mock_datasets():
        train_and_evaluate(small_config(), str(workdir))  # steps 11..20 on this one device
    assert_same_losses(lines(workdir), lines(baseline))


def resume_and_compare_bitwise(baseline: Path, workdir: Path) -> None:
    """Run the interrupted CLI run to its end; its final variables equal the uninterrupted's."""
    resumed = cli(workdir, *SMALL)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    a, b = final_model(baseline), final_model(workdir)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _kill_when(proc, ready, timeout: float = 120) -> bool:
    """SIGKILL `proc` as soon as `ready()` holds; False if it finished first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "the condition never held"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_and_at_random_steps_then_resume(baseline, tmp_path):
    """Killed three times (twice while orbax writes a checkpoint, once at a random step), the run
    still ends bitwise equal to the uninterrupted one, each step logged once (metrics.jsonl and
    TensorBoard). `pytest -m slow -k sigkill_during`."""
    checkpoints = tmp_path / "checkpoints"

    def writing() -> bool:  # orbax writes into a temporary directory, renamed when complete
        return checkpoints.is_dir() and any(not p.name.isdigit() for p in checkpoints.iterdir())

    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = cli(tmp_path, *SMALL, env={"TINY_STEP_SLEEP": "0.1"})
        if attempt < 2:
            assert _kill_when(proc, writing), "finished before a checkpoint write was caught"
        else:
            deadline = time.time() + float(rng.uniform(8, 14))  # start-up, then some steps
            if not _kill_when(proc, lambda deadline=deadline: time.time() > deadline):
                break
    killed = len(json.loads((tmp_path / "provenance.json").read_text())["launches"])
    resume_and_compare_bitwise(baseline, tmp_path)
    ours, theirs = lines(tmp_path), lines(baseline)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/top1", "train/learning_rate", "eval/loss", "eval/top1"):
            assert x.get(key) == y.get(key), (x["step"], key)
    launches = json.loads((tmp_path / "provenance.json").read_text())["launches"]
    assert [launch["exit_status"] for launch in launches] == [None] * killed + [0]
    # TensorBoard too shows each step once: the steps a killed run wrote after its last
    # checkpoint are dropped by the restart's SessionLog START event.
    events = EventAccumulator(str(tmp_path), size_guidance={TENSORS: 0})
    events.Reload()
    assert [e.step for e in events.Tensors("train/loss")] == list(range(1, 21))
    assert [e.step for e in events.Tensors("eval/top1")] == [10, 20]


def _damage_newest(workdir: Path) -> int:
    newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    files = [p for p in (workdir / "checkpoints" / str(newest)).rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    return newest


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    from archs.training import COMPLETE

    assert run(tmp_path, num_train_steps=8) == COMPLETE  # checkpoints at 4 and 8
    damaged = _damage_newest(tmp_path)
    with caplog.at_level("WARNING"):
        assert run(tmp_path, num_train_steps=12) == COMPLETE
    assert f"checkpoint step {damaged} " in caplog.text and "does not restore" in caplog.text
    assert (tmp_path / "checkpoints_corrupt" / str(damaged)).is_dir()  # kept for inspection
    steps = [r["step"] for r in lines(tmp_path) if "train/loss" in r]
    assert steps == list(range(1, 13))  # 5..8 redone from the step-4 checkpoint, each once


def test_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    from archs.training import RunError

    with pytest.raises(
        RunError, match=r"non-finite loss, gradient or statistic at step \d+; last good"
    ) as e:
        run(tmp_path, learning_rate=1e30, log_every_steps=4)
    bad_step = int(str(e.value).split(" at step ")[1].split(";")[0])
    assert 1 <= bad_step <= 4
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(step < bad_step for step in saved)  # nothing non-finite was checkpointed
    assert ("none" in str(e.value)) == (not saved)


@pytest.mark.slow
def test_skip_nonfinite_skips_and_counts(tmp_path):
    from archs.training import COMPLETE

    assert run(tmp_path, learning_rate=1e30, skip_nonfinite=True) == COMPLETE
    skipped = sum(r.get("train/skipped_steps", 0) for r in lines(tmp_path))
    assert 0 < skipped < 12
    for name, value in final_model(tmp_path).items():
        assert np.all(np.isfinite(value)), name


@pytest.mark.slow
def test_full_disk_is_one_clear_error_and_keeps_the_checkpoints(tmp_path):
    import orbax.checkpoint as ocp

    from archs.training import RunError

    run(tmp_path, num_train_steps=4)
    before = tree_digest(tmp_path / "checkpoints")
    full = OSError(errno.ENOSPC, "No space left on device")
    with (
        mock.patch.object(ocp.CheckpointManager, "save", side_effect=full),
        pytest.raises(RunError, match=r"disk full while saving step 8 .* intact"),
    ):
        run(tmp_path, num_train_steps=8)
    assert tree_digest(tmp_path / "checkpoints") == before


# The bad-input catalogue: each case is refused with one line (exit 2 from train.py) before
# anything in the workdir changes. In process: ConfigError is what train.py prints and exits 2 on.
IN_PROCESS = [
    ({"model": "resnet_nonexistent"}, "unknown model"),
    ({"dataset": "cifar_ten"}, "unknown dataset"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"learning_rate": -0.1}, "learning_rate must be positive"),
    ({"optimizer": "adagrad"}, "optimizer='adagrad' is not supported"),
    ({"dtype": "float16"}, "dtype='float16' is not supported"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"parallelism": "dp"}, "parallelism='dp' is not supported; allowed: jit, pmap"),
    ({"bn_mode": "local"}, "bn_mode='local'"),
    ({"parallelism": "pmap"}, "set bn_mode='per_device'"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be positive"),
    ({"grad_accum_steps": 3}, "does not split into grad_accum_steps=3"),
    ({"eval_protocol": "five_crop"}, "eval_protocol='five_crop'"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be positive"),
    ({"num_train_steps": 0, "num_epochs": 0.0}, "set num_train_steps or num_epochs"),
    ({"model_kwargs": {"width": 0}}, "width must be >= 1"),
    ({"model_kwargs": {"depth": 3}}, "unknown override"),
    ({"model": "tiny_other"}, "holds a run with model="),
    ({"dataset": "cifar100"}, "holds a run with dataset="),
    ({"init_from": "/nonexistent"}, "does not exist"),
    ({"init_from": "NOT_A_CHECKPOINT"}, "is not a readable checkpoint"),
    ({"init_from": "OTHER_MODEL"}, "matches no variable of tiny_test"),
]


@pytest.fixture(scope="module")
def other_model_checkpoint(tmp_path_factory):
    """An `archs.convert`-style checkpoint of a model sharing no variable with the tiny one."""
    from flax import nnx

    from archs.model_state import save_state

    model = archs.create_model("resnet20", num_classes=7, rngs=nnx.Rngs(0))
    return save_state(model, tmp_path_factory.mktemp("other") / "resnet20")


@pytest.mark.parametrize(("overrides", "message"), IN_PROCESS)
def test_bad_input_catalogue_in_process(
    baseline, other_model_checkpoint, tmp_path, overrides, message
):
    from archs.training import ConfigError

    if "tiny_other" not in archs.list_models():
        register(
            "tiny_other",
            _tiny,
            family="test",
            preprocessing=Preprocessing(image_size=32, crop_pct=1.0),
        )
    overrides = dict(overrides)
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = ml_collections.ConfigDict(overrides["model_kwargs"])
    if overrides.get("init_from") == "NOT_A_CHECKPOINT":
        (tmp_path / "notes.txt").write_text("not a checkpoint")
        overrides["init_from"] = str(tmp_path)
    if overrides.get("init_from") == "OTHER_MODEL":
        overrides["init_from"] = str(other_model_checkpoint)
    # Cases about the workdir's identity run on the baseline; the others on a fresh workdir
    # (which must stay absent) unless they name the baseline's model and dataset.
    workdir = baseline if "holds a run" in message else tmp_path / "fresh"
    before = tree_digest(baseline)
    with pytest.raises(ConfigError, match=message):
        run(workdir, **overrides)
    assert tree_digest(baseline) == before
    assert not (tmp_path / "fresh").exists()


# `--config.KEY=VALUE` overrides are flags that config_flags defines while parsing, once per
# process, so those cases run through the real command below.
CLI = [
    (("--no_such_flag",), "no_such_flag"),
    (("--num_processes=2",), "need all of --coordinator_address"),
    (("extra_argument",), "unexpected arguments"),
    (("--config=configs/no_such_file.py",), "no_such_file.py"),
    (("--config=configs/cifar10.py:resnet20,no_recipe",), "no_recipe"),
]


@pytest.fixture(scope="module")
def train(repo_script):
    return repo_script("train.py")


@pytest.mark.parametrize(("args", "expected"), CLI)
def test_bad_input_catalogue_on_the_command_line(baseline, train, capsys, args, expected):
    """train.py's parsing and main, in process: exit 2, one error line, the workdir unchanged."""
    from absl import flags

    argv = ["train.py", "--config=configs/cifar10.py:tiny_test,fast", f"--workdir={baseline}"]
    before = tree_digest(baseline)
    flags.FLAGS.unparse_flags()
    with mock_datasets(), pytest.raises(SystemExit) as exit_:
        train.main(train._parse([*argv, *args]))
    assert exit_.value.code == 2
    errors = [s for s in capsys.readouterr().err.splitlines() if s.startswith("train.py: error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert tree_digest(baseline) == before


@pytest.mark.slow
def test_bad_overrides_exit_2_through_the_real_command(tmp_path):
    cases = {"no_such_key=1": "no_such_key", "batch_size=eight": "eight"}
    procs = {o: cli(tmp_path / o, o) for o in cases}
    for override, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        errors = [s for s in err.splitlines() if s.startswith("train.py: error:")]
        assert len(errors) == 1 and cases[override] in errors[0], errors
        assert not (tmp_path / override).exists()


@pytest.mark.slow
def test_per_device_batchnorm_under_pmap_shard_map_and_ghost_batchnorm_on_one_device(tmp_path):
    """Per-device statistics on 8 devices: pmap computes what the jitted shard_map step does;
    and bn_group_size=k on one device normalises each group of k consecutive examples on its
    own and updates the running statistics with the groups' mean, as 8 devices of k examples
    each do with per-device statistics averaged across devices."""
    # No dropout where one device repeats 8: its keys are drawn per device.
    no_dropout = {"model_kwargs": {"drop_rate": 0.0}, "batch_size": 16}
    runs_in_subprocess(
        8,
        {
            tmp_path / "pmap": {"parallelism": "pmap", "bn_mode": "per_device"},
            tmp_path / "shard_map": {"bn_mode": "per_device"},
            tmp_path / "eight": {"bn_mode": "per_device", **no_dropout},
        },
    )
    assert_same_losses(lines(tmp_path / "pmap"), lines(tmp_path / "shard_map"))
    run(tmp_path / "ghost", bn_group_size=2, **no_dropout)
    ours, theirs = lines(tmp_path / "ghost"), lines(tmp_path / "eight")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/top1", "eval/loss", "eval/top1"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=1e-5, err_msg=f"{key} {x['step']}")
    run(tmp_path / "whole", **no_dropout)
    whole = [r["train/loss"] for r in lines(tmp_path / "whole") if "train/loss" in r]
    assert whole[0] != pytest.approx(ours[0]["train/loss"], rel=1e-3)  # the groups matter

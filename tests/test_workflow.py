"""What a researcher runs, through the real entry points: dotted model keywords, `--check`,
every sweep preset, Ctrl-C, a run that is already complete, and what a restart leaves behind
(provenance, TensorBoard)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from unittest import mock

import pytest
import tensorflow_datasets as tfds
from training_support import ROOT, SMALL, cli, final_model, lines, mock_datasets, small_config

from archs.training import COMPLETE, ConfigError, RunError, sweep, train_and_evaluate
from archs.training.overrides import load_config
from archs.training.plan import plan_run

PRESETS = sorted((ROOT / "configs" / "sweeps").glob("[!_]*.py"))


def test_model_keywords_are_overridden_from_the_command_line():
    config = load_config(
        [
            "--config=configs/cifar10.py:resnet20",
            "--config.model_kwargs.attention=se",
            "--config.model_kwargs.se_reduction=4",
            "--config.model_kwargs.depths=(1, 1, 1)",
        ]
    )
    assert config.model_kwargs.to_dict() == {
        "attention": "se",
        "se_reduction": 4,
        "depths": (1, 1, 1),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.model_kwargs.atention=se"], "'atention' .* did you mean attention"),
        (["--config.model_kwargs.se_reduction=four"], "se_reduction must be an int, got 'four'"),
        (["--config.model_kwargs.zero_init_residual=yes"], "must be True or False, got 'yes'"),
        (["--config.lerning_rate=0.2"], "key 'lerning_rate'; did you mean learning_rate"),
        (["--config.learning_rate=fast"], "learning_rate must be a float, got 'fast'"),
        (["--config.batch_size=eight"], "batch_size must be an int, got 'eight'"),
    ],
)  # fmt: skip
def test_a_bad_override_is_one_line_naming_it(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as error, mock_datasets():
        config = load_config(["--config=configs/cifar10.py:resnet20", *args])
        config.data_dir = "/nonexistent/tfds"
        plan_run(config, str(tmp_path / "w"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_check_prints_the_plan_and_writes_nothing(tmp_path):
    proc = cli(tmp_path / "w", *SMALL, "model_kwargs.width=16", flags=("--check",))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "run      tiny_test (" in out and "width=16" in out
    assert "length   20 steps = 4 epochs of 5 steps" in out
    assert "(new run)" in out
    assert out.splitlines()[-1] == "checks passed; nothing was written"
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_check_refuses_a_misspelt_model_keyword_in_one_line(tmp_path):
    proc = cli(tmp_path / "w", *SMALL, "model_kwargs.widht=16", flags=("--check",))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "train.py: error: unknown override 'widht' for model 'tiny_test'; did you mean width? "
        "(allowed: drop_rate, norm, width)"
    ]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_smoke_preset_passes_train_checks(preset, tmp_path, monkeypatch):
    """The runs a preset generates are what train.py accepts (parsed by its own parser and
    checked by its own plan), on mock data shaped like the real datasets."""
    monkeypatch.chdir(ROOT)
    out = []
    with mock_datasets(num_examples=256):
        status = sweep.run_sweep(
            f"configs/sweeps/{preset.name}:smoke", tmp_path, check=True, echo=out.append
        )
    assert status == 0, "\n".join(out)
    assert out[-1].startswith(f"{len(out) - 1}/{len(out) - 1} runs pass")


# The presets whose first run is a CIFAR ResNet compile in seconds; the others' (VGG, GoogLeNet,
# DenseNet, ResNet-50) take minutes each on a CPU, so CI trains those models in their own tests
# and checks those presets' runs with train.py's parser and plan above.
TRAINED_PRESETS = ["bn_group_size", "degradation", "se", "shortcuts", "tricks"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", TRAINED_PRESETS)
def test_the_first_run_of_a_smoke_preset_trains_through_train_py(preset, repo_script, tmp_path):
    """The preset's first run, through the train.py command line it generates (train.py's own
    parser and main, in this process under mock data), cut to two steps of 8 images at 32
    pixels."""
    from absl import flags

    train = repo_script("train.py")
    base, overrides = sweep.load_sweep(f"{ROOT}/configs/sweeps/{preset}.py:smoke")
    run = sweep.expand(base, overrides[:1], tmp_path)[0]
    short = ["num_train_steps=2", "eval_every_steps=2", "batch_size=8", "image_size=32"]
    short += ["data_dir=/nonexistent/tfds"]
    argv = ["train.py", *run.command([]), *(f"--config.{a}" for a in short)]
    flags.FLAGS.unparse_flags()
    with mock_datasets(), pytest.raises(SystemExit) as exit_:
        train.main(train._parse(argv))
    assert exit_.value.code == 0
    assert json.loads((tmp_path / run.name / "done.json").read_text())["step"] == 2


def test_a_complete_run_says_so_and_does_nothing(baseline, tmp_path, capsys):
    workdir = tmp_path / "copy"
    shutil.copytree(baseline, workdir)
    before = (workdir / "metrics.jsonl").read_text()
    with mock_datasets():
        assert train_and_evaluate(small_config(), str(workdir)) == COMPLETE
    assert "complete: step 20, eval top-1" in capsys.readouterr().out
    assert (workdir / "metrics.jsonl").read_text() == before
    assert len(json.loads((workdir / "provenance.json").read_text())["launches"]) == 1


def test_the_console_tells_the_run_as_one_story(tmp_path, capsys):
    """The plan, then a line saying the step compiles, one progress line per interval, the
    evaluation, the end; a relaunch says where it resumes."""
    config = small_config(num_train_steps=6, log_every_steps=2, eval_every_steps=6)
    with mock_datasets():
        assert train_and_evaluate(config, str(tmp_path)) == COMPLETE
    out = capsys.readouterr().out.splitlines()
    start = out.index("starting: compiling the train step; progress every 2 steps")
    assert out[0].startswith("run      tiny_test (") and "tricks   " not in "\n".join(out)
    assert out[start - 1] == "preparing: reading the data, building the model and its state"
    progress = [line.split(" (")[0] for line in out if line.startswith("step ")]
    assert progress == ["step 2/6", "step 4/6", "step 6/6"]
    assert out.index(next(s for s in out if s.startswith("step 2/6"))) == start + 1
    assert out[-2].startswith("eval at step 6:") and out[-1].startswith("done: step 6, eval top-1")
    with mock_datasets():
        assert train_and_evaluate(small_config(num_train_steps=8), str(tmp_path)) == COMPLETE
    assert "resuming at step 6: compiling the train step; progress every step" in (
        capsys.readouterr().out.splitlines()
    )


def test_the_plan_names_the_training_knobs_that_are_on(tmp_path):
    from archs.training.plan import describe

    knobs = {"ema_decay": 0.99, "mixup_alpha": 0.2, "randaugment": "2,9", "grad_clip_norm": 1.0}
    with mock_datasets():
        text = describe(plan_run(small_config(**knobs), str(tmp_path / "w")))
    assert "tricks   EMA 0.99, mixup 0.2, RandAugment 2,9, gradient clip 1.0, mix_prob 1.0" in (
        text.splitlines()
    )


def test_changed_settings_are_named_with_old_and_new_values(baseline):
    with mock_datasets():
        plan = plan_run(small_config(learning_rate=0.2, seed=3), str(baseline))
    assert plan.changed == ("learning_rate: 0.1 -> 0.2", "seed: 0 -> 3")


def test_a_failed_download_is_one_line_within_seconds_and_writes_nothing(tmp_path):
    from tensorflow_datasets.core.download import downloader

    seen = []

    def offline(builder, *args, **kwargs):
        seen.append(downloader.MAX_RETRIES)
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'\nmore detail")

    config = small_config(data_dir=str(tmp_path / "tfds"), download=True)
    with (
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", offline),
        pytest.raises(RunError, match=r"could not download 'cifar10' \(no network\?\)") as error,
    ):
        train_and_evaluate(config, str(tmp_path / "w"))
    assert seen == [2] and downloader.MAX_RETRIES == 10  # few retries, restored afterwards
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()


def _wait_for(condition, proc, timeout=180.0):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _interrupt(proc) -> tuple[float, str]:
    """SIGINT; seconds until the process exited, and its stdout."""
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    return time.time() - sent, out


def _train_steps(workdir: Path) -> list[int]:
    if not (workdir / "metrics.jsonl").exists():
        return []
    return [r["step"] for r in lines(workdir) if "train/loss" in r]


@pytest.mark.slow
def test_ctrl_c_mid_run_and_mid_evaluation_saves_exits_and_resumes_bitwise(baseline, tmp_path):
    # Ctrl-C between two train steps: the next step boundary saves.
    proc = cli(tmp_path, *SMALL, env={"TINY_STEP_SLEEP": "0.3"})
    _wait_for(lambda: len(_train_steps(tmp_path)) >= 3, proc)
    seconds, out = _interrupt(proc)
    assert seconds < 10
    saved = int(out.strip().splitlines()[-1].split()[2].rstrip(";").replace(",", ""))
    assert out.strip().splitlines()[-1] == f"saved step {saved}; run the same command to resume"
    assert (tmp_path / "checkpoints" / str(saved)).is_dir() and saved < 10

    # Ctrl-C during the evaluation of step 10 (5 batches of 3 s each): stops within a batch.
    proc = cli(tmp_path, *SMALL, "eval_batch_size=8", env={"TINY_EVAL_SLEEP": "3"})
    _wait_for(lambda: 10 in _train_steps(tmp_path), proc)
    time.sleep(1.0)
    seconds, out = _interrupt(proc)
    assert seconds < 10
    assert out.strip().splitlines()[-1] == "saved step 10; run the same command to resume"
    assert not [r for r in lines(tmp_path) if "eval/top1" in r]

    # The same command resumes: the step-10 evaluation first, then on to the end.
    proc = cli(tmp_path, *SMALL, "eval_batch_size=8")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    a, b = final_model(baseline), final_model(tmp_path)
    assert all((a[k] == b[k]).all() for k in a)
    ours, theirs = lines(tmp_path), lines(baseline)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for x, y in zip(ours, theirs, strict=True):
        for key in ("train/loss", "train/learning_rate", "eval/loss", "eval/top1"):
            assert x.get(key) == y.get(key), (x["step"], key)
    launches = json.loads((tmp_path / "provenance.json").read_text())["launches"]
    assert [launch["exit_status"] for launch in launches] == [130, 130, 0]


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
    proc = cli(tmp_path, *SMALL, env={"TINY_STEP_SLEEP": "2"})
    _wait_for(lambda: len(_train_steps(tmp_path)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "second interrupt: exiting without saving" in err


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_goes_on(tmp_path):
    first = cli(tmp_path, *SMALL, "num_train_steps=400", env={"TINY_STEP_SLEEP": "0.5"})
    _wait_for(lambda: len(_train_steps(tmp_path)) >= 2, first)
    second = cli(tmp_path, *SMALL, "num_train_steps=400")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"train.py: error: workdir '{tmp_path}' is in use by pid {first.pid}")
    went_on = len(_train_steps(tmp_path)) + 2
    _wait_for(lambda: len(_train_steps(tmp_path)) >= went_on, first)
    _, out = _interrupt(first)
    assert out.strip().splitlines()[-1].startswith("saved step ")
    steps = _train_steps(tmp_path)
    assert steps == list(range(1, len(steps) + 1))
    assert len(json.loads((tmp_path / "provenance.json").read_text())["launches"]) == 1

"""Sweeps: expansion and naming, launching against a fake train.py, the CLI, and the presets.

The fake trainer (written per test) follows the run contract of docs/design.md: it writes
config.json, metrics.jsonl and done.json into --workdir, exits 75 once when asked to simulate a
preemption and 3 when asked to fail.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from training_support import load_file

import archs
from archs.training import sweep
from archs.training.workdir import WorkdirLock

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "sweeps").glob("[!_]*.py"))

# The contract keys of docs/design.md (archs/training/config.py) that the presets may override.
CONTRACT_CONFIG_KEYS = {
    "model", "model_kwargs", "dataset", "data_dir", "batch_size", "num_train_steps",
    "num_epochs", "learning_rate", "optimizer", "momentum", "nesterov", "schedule",
    "warmup_epochs", "weight_decay", "label_smoothing", "seed", "dtype", "parallelism",
    "bn_mode", "init_from", "eval_only", "log_every_steps", "eval_every_steps",
    "checkpoint_every_steps", "keep_checkpoints",
    # the 2026-12 contract keys
    "bn_group_size", "ema_decay", "mixup_alpha", "cutmix_alpha", "mix_prob", "mix_switch_prob",
    "randaugment", "grad_clip_norm", "writers", "eval_protocol", "data_pipeline",
    # documented in docs/design.md's key table; no contract key says "no bias decay"
    "weight_decay_exclude_norm_bias", "image_size",
}  # fmt: skip
TRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 1_281_167}

FAKE_TRAIN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    workdir = args["workdir"]
    os.makedirs(workdir, exist_ok=True)

    def preempted(signum, frame):
        open(os.path.join(workdir, "sigterm"), "w").close()
        sys.exit(75)

    signal.signal(signal.SIGTERM, preempted)
    config = {k[len("config."):]: v for k, v in args.items() if k.startswith("config.")}
    with open(os.path.join(workdir, "calls"), "a") as f:
        f.write(f"{time.time()} start\\n")
    print("fake train", args["config"], flush=True)
    time.sleep(float(config.get("sleep", 0)))
    if config.get("fail"):
        print("Traceback: the model exploded", flush=True)
        sys.exit(3)
    marker = os.path.join(workdir, "preempted")
    if config.get("preempt") and not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(75)
    json.dump({"base": args["config"], **config}, open(os.path.join(workdir, "config.json"), "w"))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "eval/top1": 0.5, "eval/top5": 0.9}) + "\\n")
    with open(os.path.join(workdir, "calls"), "a") as f:
        f.write(f"{time.time()} end\\n")
    json.dump({"step": 1}, open(os.path.join(workdir, "done.json"), "w"))
    """
)


@pytest.fixture
def fake_train(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_TRAIN)
    return [sys.executable, str(path)]


def write_sweep(tmp_path: Path, runs: list[dict], base: str = "configs/cifar10.py:resnet20"):
    path = tmp_path / "my_sweep.py"
    path.write_text(f"def get_sweep(arg=None):\n    return {base!r}, {runs!r}\n")
    return str(path)


def calls(run_dir: Path) -> list[str]:
    return (run_dir / "calls").read_text().split("\n")[:-1] if (run_dir / "calls").exists() else []


def test_product_and_zip_combine():
    runs = sweep.product(sweep.zip_(model=["a", "b"], learning_rate=[0.1, 0.2]), seed=[0, 1, 2])
    assert len(runs) == 6
    assert runs[0] == {"model": "a", "learning_rate": 0.1, "seed": 0}
    assert runs[-1] == {"model": "b", "learning_rate": 0.2, "seed": 2}
    assert sweep.product(model=["a"], **{"model_kwargs.shortcut": ["A", "B"]}) == [
        {"model": "a", "model_kwargs.shortcut": "A"},
        {"model": "a", "model_kwargs.shortcut": "B"},
    ]
    with pytest.raises(ValueError, match=r"equally long.*\[2, 3\]"):
        sweep.zip_(model=["a", "b"], seed=[0, 1, 2])


def test_smoke_adds_short_schedule_and_check_arg_names_allowed():
    (run,) = sweep.smoke([{"model": "m"}], steps=7, batch_size=4)
    assert run == {"model": "m", "num_train_steps": 7, "batch_size": 4, "eval_every_steps": 7}
    with pytest.raises(ValueError, match=r"'big'.*allowed: smoke"):
        sweep.check_arg("big", ("smoke",))


def test_run_names_are_readable_safe_and_bounded():
    assert sweep.run_name({"model": "plain20", "seed": 0}) == "model=plain20,seed=0"
    assert sweep.run_name({"model_kwargs.shortcut": "B"}) == "shortcut=B"
    assert sweep.run_name({"data_dir": "/a b/c"}) == "data_dir=_a_b_c"
    assert sweep.run_name({"model_kwargs.depths": (2, 2)}) == "depths=_2,2_"
    assert sweep.run_name({"model_kwargs.config": [(64, 5), "M"]}) == "config=_64,5_,M_"
    assert sweep.run_name({}) == "base"
    long_a = sweep.run_name({"init_from": "x" * 300 + "a"})
    long_b = sweep.run_name({"init_from": "x" * 300 + "b"})
    assert len(long_a) == 120 and long_a != long_b


def test_expand_rejects_runs_with_the_same_name(tmp_path):
    with pytest.raises(ValueError, match="share the name 'data_dir=_a'"):
        sweep.expand("c.py", [{"data_dir": "/a"}, {"data_dir": "_a"}], tmp_path)


def test_command_spells_overrides_as_config_flags(tmp_path):
    (run,) = sweep.expand(
        "configs/cifar10.py:resnet20",
        [{"model_kwargs.shortcut": "B", "model_kwargs.config": [(64, 5), "M"], "nesterov": True}],
        tmp_path,
    )
    assert run.command(["T"]) == [
        "T",
        "--config=configs/cifar10.py:resnet20",
        f"--workdir={tmp_path / run.name}",
        "--config.model_kwargs.shortcut=B",
        "--config.model_kwargs.config=((64, 5), 'M')",
        "--config.nesterov=True",
    ]


def test_device_slots_split_gpus_between_parallel_runs():
    assert sweep.device_slots(["0", "1", "2", "3"], 2) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "2,3"},
    ]
    assert sweep.device_slots(["0", "1", "2", "3"], 1) == [{}]
    assert sweep.device_slots([], 3) == [{}, {}, {}]
    assert sweep.device_slots(["0"], 2) == [{"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450"}] * 2
    with pytest.raises(ValueError, match="--parallel=3 is more than the 2 GPUs"):
        sweep.device_slots(["0", "1"], 3)


def test_visible_gpus_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert sweep.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep.visible_gpus() == []


def test_local_sweep_runs_in_parallel_requeues_and_reports_failures(tmp_path, fake_train):
    runs = [
        {"model": "a", "sleep": 0.5},
        {"model": "b", "sleep": 0.5},
        {"model": "c", "preempt": 1},
        {"model": "d", "fail": 1},
    ]
    spec = write_sweep(tmp_path, runs)
    out: list[str] = []
    workdir = tmp_path / "sweep"
    code = sweep.run_sweep(spec, workdir, parallel=2, train_command=fake_train, echo=out.append)
    text = "\n".join(out)
    assert code == 1
    names = [sweep.run_name(r) for r in runs]
    assert [(workdir / n / "done.json").exists() for n in names] == [True, True, True, False]
    assert "requeue model=c,preempt=1 (preempted, exit 75)" in text
    assert "--- FAILED model=d,fail=1: exit 3" in text and "the model exploded" in text
    assert "3/4 runs finished" in text
    # Both slow runs started before either ended: two at a time.
    (a_start, _), (b_start, _) = (calls(workdir / n) for n in names[:2])
    a_end, b_end = (float(calls(workdir / n)[-1].split()[0]) for n in names[:2])
    assert max(float(a_start.split()[0]), float(b_start.split()[0])) < min(a_end, b_end)

    out.clear()
    code = sweep.run_sweep(spec, workdir, parallel=2, train_command=fake_train, echo=out.append)
    assert code == 1 and "4 runs, 3 finished, 1 to train" in out[0]
    assert len(calls(workdir / names[0])) == 2  # not launched again
    assert len(calls(workdir / names[3])) == 2  # the failed run is tried again


def test_a_run_held_by_another_launch_is_running_not_failed(tmp_path, fake_train):
    runs = [{"model": "a"}, {"model": "b"}]
    spec = write_sweep(tmp_path, runs)
    held = tmp_path / "sweep" / sweep.run_name(runs[1])
    out: list[str] = []
    with WorkdirLock(held):  # this test process is the other launch
        code = sweep.run_sweep(spec, tmp_path / "sweep", train_command=fake_train, echo=out.append)
        sweep.run_sweep(spec, tmp_path / "sweep", check=True, echo=out.append)
    text = "\n".join(out)
    assert code == 0 and not calls(held)
    assert "2 runs, 0 finished, 1 running elsewhere, 1 to train" in text
    assert f"running elsewhere model=b (pid {os.getpid()} on host" in text
    assert "1/2 runs finished, 1 running elsewhere" in text
    assert f"running model=b (pid {os.getpid()}" in text and "FAILED" not in text


def test_sigterm_to_the_sweep_reaches_its_runs(tmp_path, fake_train):
    spec = write_sweep(tmp_path, [{"model": "a", "sleep": 60}])
    workdir = tmp_path / "sweep"
    code = (
        "import sys\n"
        "from archs.training import sweep\n"
        f"sys.exit(sweep.run_sweep({spec!r}, {str(workdir)!r}, train_command={fake_train!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    run_dir = workdir / sweep.run_name({"model": "a", "sleep": 60})
    deadline = time.time() + 60
    while not calls(run_dir):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75
    assert (run_dir / "sigterm").exists()  # the training was told, not orphaned


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_same_jobs(tmp_path, fake_train):
    pytest.importorskip("submitit")
    runs = sweep.expand("c.py", [{"model": "a"}, {"model": "b", "preempt": 1}], tmp_path / "w")
    out: list[str] = []
    outcomes = sweep.run_submitit(
        runs,
        folder=tmp_path / "submitit",
        cluster="local",
        train_command=fake_train,
        poll_s=0.2,
        echo=out.append,
    )
    assert sorted((o.run.name, o.returncode) for o in outcomes) == [
        ("model=a", 0),
        ("model=b,preempt=1", 0),
    ]
    assert all(run.finished for run in runs)
    assert any(line.startswith("requeue model=b,preempt=1") for line in out)


@pytest.fixture(scope="module")
def cli(repo_script):
    return repo_script("sweep.py")


def run_cli(cli, argv: list[str]) -> int:
    from absl import flags

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sweep.py", *argv])
    return cli.main(["sweep.py"])


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", ["", ":smoke"])
def test_preset_dry_run(cli, capsys, tmp_path, preset, arg):
    spec = f"{preset.relative_to(ROOT)}{arg}"
    code = run_cli(cli, [f"--sweep={ROOT / spec}", f"--workdir={tmp_path}", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    _, runs = sweep.load_sweep(str(ROOT / spec))
    assert code == 0
    assert [line.split("\t") for line in lines] == [
        [sweep.run_name(r), json.dumps(r)] for r in runs
    ]
    assert len({line.split("\t")[0] for line in lines}) == len(runs) >= 2
    assert not any(tmp_path.iterdir()), "a dry run must not create run directories"


def test_cli_reports_bad_input_with_exit_2(cli, capsys, tmp_path):
    assert run_cli(cli, [f"--sweep={tmp_path}/nope.py", f"--workdir={tmp_path}"]) == 2
    assert "nope.py' does not exist" in capsys.readouterr().err
    assert run_cli(cli, [f"--sweep={PRESETS[0]}:huge", f"--workdir={tmp_path}"]) == 2
    assert "unknown sweep argument 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_documents_claim_source_expectation_and_commands(preset):
    doc = load_file(preset).__doc__ or ""
    for field in ("Claim:", "Source:", "Expected:", "Command:", "Smoke:"):
        assert field in doc, f"{preset.name} docstring lacks {field}"
    assert f"--sweep=configs/sweeps/{preset.name}:smoke" in doc


def _preset_runs():
    for preset in PRESETS:
        for arg in ("", ":smoke"):
            base, runs = sweep.load_sweep(f"{preset}{arg}")
            for run in runs:
                yield preset.stem + arg, base, run


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_overrides_are_design_config_keys(preset):
    for arg in ("", ":smoke"):
        base, runs = sweep.load_sweep(f"{preset}{arg}")
        assert base.split(":")[0] in ("configs/cifar10.py", "configs/imagenet.py"), base
        for run in runs:
            top = {key.split(".")[0] for key in run}
            assert top <= CONTRACT_CONFIG_KEYS, f"{preset.stem}{arg}: {top - CONTRACT_CONFIG_KEYS}"
            assert all(k.count(".") == 0 or k.startswith("model_kwargs.") for k in run)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_runs_are_valid_configs_with_their_schedules(preset, monkeypatch):
    """Every run of the full presets too (the smoke runs also go through train.py's plan in
    test_workflow): its config as train.py parses it, checked, and its schedule."""
    from archs.training import optim
    from archs.training.config import check_config
    from archs.training.overrides import config_from_overrides

    monkeypatch.chdir(ROOT)
    for arg in ("", ":smoke"):
        base, runs = sweep.load_sweep(f"{preset}{arg}")
        for run in runs:
            config = config_from_overrides(base, run)
            check_config(config)
            steps_per_epoch = TRAIN_EXAMPLES[config.dataset] // config.batch_size
            total = config.num_train_steps or round(config.num_epochs * steps_per_epoch)
            optim.learning_rate_schedule(config, steps_per_epoch, total)


def test_bn_group_size_sweep_compares_groups_with_the_whole_batch():
    """Every batch size runs with BatchNorm groups and without, so the arms differ on any
    number of devices (bn_mode alone does not on one device)."""
    preset = ROOT / "configs" / "sweeps" / "bn_group_size.py"
    expected = {
        "": ("configs/imagenet.py:resnet50,goyal", 32),
        ":smoke": ("configs/cifar10.py:resnet20,he", 8),
    }
    for arg, (expected_base, group) in expected.items():
        base, runs = sweep.load_sweep(f"{preset}{arg}")
        assert base == expected_base
        groups_by_batch: dict[int, set] = {}
        for run in runs:
            groups_by_batch.setdefault(run["batch_size"], set()).add(run["bn_group_size"])
        assert len(groups_by_batch) >= 2
        assert all(groups == {group, 0} for groups in groups_by_batch.values()), groups_by_batch


def test_tricks_sweep_stacks_the_paper_rows_one_by_one():
    """Each paper run keeps every knob of the run before it and changes at least one (He et al.
    2019's Tables 4-6); the two isolating arms are the label-smoothing run with one of the last
    row's knobs; the extra arms are the last paper run with more knobs."""
    module = load_file("configs/sweeps/tricks.py")
    base, runs = module.get_sweep()
    assert base == "configs/imagenet.py:resnet50,resnext"
    paper = runs[: len(module.PAPER_ROWS) + 1]
    for before, after in itertools.pairwise(paper):
        assert set(before) <= set(after), f"{after} dropped {set(before) - set(after)}"
        assert any(before.get(key) != value for key, value in after.items()), after
    smoothing, last = paper[-2], paper[-1]
    isolating = runs[len(paper) : len(paper) + 2]
    for run in isolating:
        changed = {key for key, value in run.items() if smoothing.get(key) != value}
        assert len(changed) == 1 and changed < set(module.PAPER_ROWS[-1]), run
    extras = runs[len(paper) + len(isolating) :]
    assert len(extras) == len(module.EXTRA_ARMS)
    assert all(last.items() <= extra.items() for extra in extras)


def test_tricks_smoke_switches_every_knob_on():
    """The CPU variant runs every training knob at least once, and only at batch 32."""
    _, runs = sweep.load_sweep(str(ROOT / "configs" / "sweeps" / "tricks.py") + ":smoke")
    on = {key for run in runs for key, value in run.items() if value not in (0, 0.0, False, "")}
    assert on >= {
        "warmup_epochs", "model_kwargs.zero_init_residual", "weight_decay_exclude_norm_bias",
        "label_smoothing", "mixup_alpha", "cutmix_alpha", "randaugment", "ema_decay",
        "grad_clip_norm",
    }  # fmt: skip
    assert {run.get("schedule") for run in runs} >= {None, "cosine"}  # step (the recipe's), cosine
    assert {run.get("eval_protocol") for run in runs} >= {None, "flip"}
    assert {run["batch_size"] for run in runs} == {32}


def test_preset_models_and_overrides_are_registered():
    registered = set(archs.list_models())
    missing, bad = set(), []
    for name, base, run in _preset_runs():
        model = run.get("model", base.split(":")[1].split(",")[0])
        if model not in registered:
            missing.add(model)
            continue
        kwargs = {k.split(".", 1)[1] for k in run if k.startswith("model_kwargs.")}
        unknown = kwargs - set(archs.model_overrides(model))
        if unknown:
            bad.append(f"{name}: {model} does not accept {sorted(unknown)}")
    assert not bad, bad
    if missing:
        pytest.skip(f"families not registered yet: {sorted(missing)}")


@pytest.mark.slow
def test_two_real_runs_in_parallel(tmp_path, prepared_cifar10):
    """Two 2-step resnet20 runs through the real train.py on the real CIFAR-10."""
    runs = sweep.product(seed=[0, 1], num_train_steps=[2], batch_size=[8], eval_every_steps=[2])
    runs = sweep.product(runs, [{"warmup_epochs": 0, "eval_split": "test[:256]"}])
    spec = write_sweep(tmp_path, runs)
    out: list[str] = []
    train = [sys.executable, str(ROOT / "train.py")]
    code = sweep.run_sweep(spec, tmp_path / "w", parallel=2, train_command=train, echo=out.append)
    assert code == 0, "\n".join(out)
    for run in sweep.expand("c.py", runs, tmp_path / "w"):
        lines = [json.loads(line) for line in (run.workdir / "metrics.jsonl").open()]
        assert any("eval/top1" in line for line in lines)

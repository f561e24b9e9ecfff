"""The README's commands, as it spells them: each one is run here through the real entry point
(small where it would train for long), or by `.ci/run` (install, tests, lint)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from training_support import ROOT

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks (`a && b` is two), without comments."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = (line.split(" #")[0] for block in blocks for line in block.splitlines())
    return [c.strip() for line in lines for c in line.split("&&") if c.strip()]


def command(prefix: str) -> list[str]:
    (line,) = [c for c in readme_commands() if c.startswith(prefix)]
    return shlex.split(line)


def run(args: list[str], paths: dict[str, Path], env=None, extra=()) -> str:
    """`args` with the README's paths replaced as `paths` says, in a subprocess; its stdout."""
    for old, new in paths.items():
        assert any(old in a for a in args), (old, args)
        args = [a.replace(old, str(new)) for a in args]
    assert args[0] == "python"
    done = subprocess.run(
        [sys.executable, *args[1:], *extra],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_readme_command_is_run_by_a_test_or_by_ci():
    """CI's one pytest run (`-m "not parity"`) holds both the default and the slow set."""
    by_tests = ("python train.py", "python sweep.py", "python -m archs.training.report")
    both_sets = 'pytest -n 2 -m "not parity"'
    assert both_sets in readme_commands() and both_sets in CI
    for line in readme_commands():
        covered = line.startswith(by_tests) or line in CI
        covered |= line in ("pytest -n 2", "pytest -n 2 -m slow")
        assert covered, f"the README's {line!r} is neither tested nor run by .ci/run"
    for prefix in by_tests:
        assert command(prefix)


@pytest.mark.slow
def test_the_readme_train_command_checks_its_plan(tmp_path):
    """Offline, the README's command (which may download) passes every check."""
    out = run(
        command("python train.py"),
        {"runs/cifar10": tmp_path / "cifar10"},
        env={"TFDS_DATA_DIR": str(tmp_path / "tfds")},
        extra=["--check"],
    )
    assert out.startswith("run      resnet20 (269,722 parameters) on cifar10")
    assert not (tmp_path / "cifar10").exists()


@pytest.mark.slow
def test_the_readme_commands_on_real_cifar10(tmp_path, prepared_cifar10):
    """The train command for 3 steps (evaluated on 256 test images), again (complete), the
    report on its workdir, and the sweep command's checks."""
    workdir = tmp_path / "cifar10"
    short = [
        f"--config.{o}" for o in ("num_train_steps=3", "warmup_epochs=0", "eval_split=test[:256]")
    ]
    train = command("python train.py")
    paths = {"runs/cifar10": workdir}
    assert "done: step 3, eval top-1" in run(train, paths, extra=short)
    assert "complete: step 3" in run(train, paths, extra=short)
    report = command("python -m archs.training.report")
    assert "| cifar10 | done | 269,722 |" in run(report, {"runs/degradation_smoke": workdir})
    sweep = run(command("python sweep.py"), {"runs/": tmp_path}, extra=["--check"])
    assert sweep.splitlines()[-1] == "4/4 runs pass the checks"

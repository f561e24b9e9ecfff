"""Sweeps: expand a sweep file into named runs and launch them locally or through submitit.

A sweep file (`configs/sweeps/NAME.py`) defines `get_sweep(arg=None) -> (base, runs)`: `base` is
a config path with its argument (`"configs/cifar10.py:resnet20"`), `runs` a list of override
dicts with dotted keys for nested fields (`{"model": "plain20", "model_kwargs.shortcut": "B"}`).
`product` and `zip_` build such lists. Every run trains with
`train.py --config=BASE --workdir=WORKDIR/NAME --config.KEY=VALUE ...`; its name is made of its
overridden values (see `run_name`). A run is finished when its `done.json` exists: launching a
sweep again skips finished runs and re-runs the others, which train.py resumes by itself.

Launchers: 'local' keeps `parallel` runs going as subprocesses, each with its share of the GPUs;
'slurm' and 'submitit_local' submit one submitit job per run through the same code. Exit code
75 (preempted after a checkpoint) requeues a run; any other failure is reported with the tail
of the run's log and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from archs.cli_errors import ExitCode, first_line
from archs.training.errors import ConfigError
from archs.training.overrides import config_from_overrides, override_args
from archs.training.runs import SWEEP_NAME, run_status

LAUNCHERS = ("local", "slurm", "submitit_local")
LOG_NAME = "train.log"
DONE_NAME = "done.json"
_MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]+")
_SHORT_PREFIXES = ("model_kwargs.",)

Overrides = dict[str, Any]


def product(*parts: Sequence[Mapping[str, Any]], **axes: Sequence[Any]) -> list[Overrides]:
    """Every combination of `parts` (lists of override dicts) and keyword axes (lists of values).

    `product(model=["plain20", "resnet20"], seed=[0, 1])` gives four runs; `product(zip_(...),
    seed=[0, 1, 2])` crosses a zipped list with seeds. Later keys win when parts share one.
    """
    lists = [list(part) for part in parts]
    lists += [[{key: value} for value in values] for key, values in axes.items()]
    return [_merge(combo) for combo in itertools.product(*lists)]


def zip_(*parts: Sequence[Mapping[str, Any]], **axes: Sequence[Any]) -> list[Overrides]:
    """Runs taken in step from equally long `parts` and keyword axes.

    `zip_(batch_size=[256, 1024], learning_rate=[0.1, 0.4])` gives two runs.
    """
    lists = [list(part) for part in parts]
    lists += [[{key: value} for value in values] for key, values in axes.items()]
    lengths = {len(values) for values in lists}
    if len(lengths) > 1:
        raise ValueError(f"zip_ needs equally long axes, got lengths {sorted(lengths)}")
    return [_merge(combo) for combo in zip(*lists, strict=True)]


def smoke(
    runs: Sequence[Mapping[str, Any]], steps: int = 200, batch_size: int = 32
) -> list[Overrides]:
    """`runs` cut down for a CPU: `steps` steps of `batch_size` images, one final evaluation."""
    short = {"num_train_steps": steps, "batch_size": batch_size, "eval_every_steps": steps}
    return product(runs, [short])


def check_arg(arg: str | None, allowed: Sequence[str]) -> None:
    """A sweep file's argument must be None or one of `allowed`."""
    if arg is not None and arg not in allowed:
        raise ValueError(f"unknown sweep argument {arg!r}; allowed: {', '.join(allowed)}")


def _merge(dicts: Sequence[Mapping[str, Any]]) -> Overrides:
    merged: Overrides = {}
    for d in dicts:
        merged.update(d)
    return merged


def _name_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "(" + ",".join(_name_value(v) for v in value) + ")"
    return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
    """`key=value` pairs joined by commas, in the order the sweep gives them.

    `{"model": "plain20", "seed": 0}` -> `model=plain20,seed=0`. `model_kwargs.` is left out of
    key names (`shortcut=B`); sequences are written `(a,b)` before characters outside
    `[A-Za-z0-9._+=,-]` become `_` (`depths=_2,2_`); names longer than 120 characters are cut
    and end with a hash of the full name. No overrides: `base`.
    """
    pairs = []
    for key, value in overrides.items():
        short = next((key[len(p) :] for p in _SHORT_PREFIXES if key.startswith(p)), key)
        pairs.append(f"{short}={_name_value(value)}")
    name = _UNSAFE.sub("_", ",".join(pairs)) or "base"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}-{digest}"
    return name


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    name: str
    base: str
    overrides: Overrides
    workdir: Path

    def command(self, train_command: Sequence[str]) -> list[str]:
        """The train.py command line of this run."""
        args = [f"--config={self.base}", f"--workdir={self.workdir}"]
        return [*train_command, *args, *override_args(self.overrides)]

    @property
    def finished(self) -> bool:
        return (self.workdir / DONE_NAME).exists()

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended: exit code 0 is done; `log_tail` holds the last lines of a failed log."""

    run: Run
    returncode: int
    log_tail: str = ""


def load_sweep(spec: str) -> tuple[str, list[Overrides]]:
    """`(base, runs)` of a sweep file given as `PATH[:ARG]`, checked for shape."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ValueError(f"sweep file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"sweep file {path!r} defines no get_sweep(arg=None)")
    base, runs = module.get_sweep(arg or None)
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be a config path string, got {base!r}")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{path}: runs must be a list of override dicts")
    return base, runs


def expand(base: str, runs: Sequence[Overrides], workdir: str | os.PathLike) -> list[Run]:
    """Named runs under `workdir`; two runs with the same name are an error."""
    named = [Run(run_name(o), base, dict(o), Path(workdir) / run_name(o)) for o in runs]
    seen: dict[str, Overrides] = {}
    for run in named:
        if run.name in seen:
            raise ValueError(
                f"runs {seen[run.name]} and {run.overrides} share the name {run.name!r}"
            )
        seen[run.name] = run.overrides
    return named


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing jax: CUDA_VISIBLE_DEVICES or nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def device_slots(gpus: Sequence[str], parallel: int) -> list[dict[str, str]]:
    """Environment additions for each of `parallel` concurrent runs.

    Several GPUs are split into `parallel` equal groups (CUDA_VISIBLE_DEVICES); one GPU shared by
    several runs gets a memory fraction each instead of JAX's default 75% preallocation.
    """
    if len(gpus) > 1 and parallel > 1:
        if parallel > len(gpus):
            raise ValueError(f"--parallel={parallel} is more than the {len(gpus)} GPUs")
        size = len(gpus) // parallel
        return [
            {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * size : (i + 1) * size])}
            for i in range(parallel)
        ]
    if len(gpus) == 1 and parallel > 1:
        share = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / parallel:.3f}"}
        return [dict(share) for _ in range(parallel)]
    return [{} for _ in range(parallel)]


def _launch(run: Run, train_command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
    run.workdir.mkdir(parents=True, exist_ok=True)
    with run.log_path.open("a") as log:
        log.write(f"$ {' '.join(run.command(train_command))}\n")
        log.flush()
        return subprocess.Popen(
            run.command(train_command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def run_local(
    runs: Sequence[Run],
    *,
    parallel: int = 1,
    train_command: Sequence[str] = (sys.executable, "train.py"),
    max_requeues: int = 3,
    poll_s: float = 0.2,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Train `runs` as subprocesses, `parallel` at a time; a run exiting 75 is started again.

    A SIGTERM or SIGINT (Ctrl-C) to the sweep is passed on to the running trainings, which
    checkpoint; the sweep waits for them and exits with 75 or 130 as they do, and running it
    again resumes them.
    """
    slots = device_slots(visible_gpus(), parallel)
    pending = list(runs)
    requeues = dict.fromkeys((r.name for r in runs), 0)
    active: dict[int, tuple[Run, subprocess.Popen]] = {}
    outcomes: list[Outcome] = []
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_EXIT_CODES:
            previous_handlers[sig] = signal.signal(sig, _raise_stopped)
    forward = signal.SIGTERM
    try:
        while pending or active:
            for slot in range(parallel):
                if slot not in active and pending:
                    run = pending.pop(0)
                    echo(f"start {run.name} (log {run.log_path})")
                    active[slot] = (run, _launch(run, train_command, slots[slot]))
            time.sleep(poll_s)
            for slot, (run, proc) in list(active.items()):
                code = proc.poll()
                if code is None:
                    continue
                del active[slot]
                if code == ExitCode.PREEMPTED and requeues[run.name] < max_requeues:
                    requeues[run.name] += 1
                    echo(f"requeue {run.name} (preempted, exit {code})")
                    pending.append(run)
                    continue
                outcomes.append(Outcome(run, code, "" if code == 0 else log_tail(run.log_path)))
                if code != ExitCode.BAD_INPUT or run_status(run.workdir).state != "running":
                    echo(f"{_ended(code)} {run.name} (exit {code})")
    except _Stopped as stopped:
        forward = stopped.signum
        echo(f"{signal.Signals(forward).name}: waiting for the running trainings to save")
        raise
    finally:
        for _, proc in active.values():
            proc.send_signal(forward)
        for _, proc in active.values():
            proc.wait()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if forward == signal.SIGINT:
            echo("the runs saved what they could; run the same command to resume the sweep")
    return outcomes


_STOP_EXIT_CODES = {signal.SIGTERM: ExitCode.PREEMPTED, signal.SIGINT: ExitCode.INTERRUPTED}


class _Stopped(SystemExit):
    """Raised in the sweep's main thread by SIGTERM or SIGINT: exit 75 or 130."""

    def __init__(self, signum: int):
        super().__init__(_STOP_EXIT_CODES[signum])
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def _ended(code: int) -> str:
    return {0: "done", ExitCode.INTERRUPTED: "interrupted"}.get(code, "FAILED")


class TrainJob:
    """A submitit job: runs train.py; on SLURM preemption or timeout, checkpoints and requeues."""

    def __init__(self, command: Sequence[str], log_path: str, grace_s: float = 120.0):
        self.command = list(command)
        self.log_path = log_path
        self.grace_s = grace_s
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            log.flush()
            self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
            return self._proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption/timeout: let train.py save, then requeue this job."""
        import submitit

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return submitit.helpers.DelayedSubmission(TrainJob(self.command, self.log_path))


def run_submitit(
    runs: Sequence[Run],
    *,
    folder: str | os.PathLike,
    cluster: str,
    parallel: int = 1,
    train_command: Sequence[str] = (sys.executable, "train.py"),
    executor_params: Mapping[str, Any] | None = None,
    max_requeues: int = 3,
    poll_s: float = 1.0,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Train `runs` as submitit jobs (`cluster` 'slurm' or 'local'); exit 75 resubmits a run."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name="archs-sweep", slurm_array_parallelism=parallel, **(executor_params or {})
    )
    requeues = dict.fromkeys((r.name for r in runs), 0)

    def submit(run: Run):
        run.workdir.mkdir(parents=True, exist_ok=True)
        job = executor.submit(TrainJob(run.command(train_command), str(run.log_path)))
        echo(f"submitted {run.name} as job {job.job_id}")
        return job

    active = [(run, submit(run)) for run in runs]
    outcomes: list[Outcome] = []
    while active:
        time.sleep(poll_s)
        still = []
        for run, job in active:
            if not job.done():
                still.append((run, job))
                continue
            try:
                code = job.result()
            except Exception as error:  # a job that died outside train.py (node failure, ...)
                outcomes.append(Outcome(run, -1, f"{error}\n{log_tail(run.log_path)}"))
                echo(f"FAILED {run.name} ({type(error).__name__})")
                continue
            if code == ExitCode.PREEMPTED and requeues[run.name] < max_requeues:
                requeues[run.name] += 1
                echo(f"requeue {run.name} (preempted, exit {code})")
                still.append((run, submit(run)))
                continue
            outcomes.append(Outcome(run, code, "" if code == 0 else log_tail(run.log_path)))
            echo(f"{_ended(code)} {run.name} (exit {code})")
        active = still
    return outcomes


def check_runs(runs: Sequence[Run], echo: Callable[[str], None] = print) -> int:
    """Every check train.py makes before a run starts, for each run (nothing is written or
    compiled): one line per run, then the count; 0 when all pass, 2 when some would fail."""
    from archs.training.plan import plan_run

    failed = 0
    for run in runs:
        status = run_status(run.workdir)
        if status.state == "running":
            echo(f"running {run.name} ({status.holder.describe()})")
            continue
        try:
            plan = plan_run(config_from_overrides(run.base, run.overrides), str(run.workdir))
        except ConfigError as error:
            failed += 1
            echo(f"FAILS  {run.name}: {first_line(error)}")
            continue
        length = f"{plan.total_steps:,} steps" if plan.total_steps else "length unknown"
        echo(f"ok     {run.name} ({plan.info.name}, {plan.num_params:,} parameters, {length})")
    echo(f"{len(runs) - failed}/{len(runs)} runs pass the checks")
    return ExitCode.BAD_INPUT if failed else ExitCode.COMPLETE


def run_sweep(
    spec: str,
    workdir: str | os.PathLike,
    *,
    launcher: str = "local",
    parallel: int = 1,
    dry_run: bool = False,
    check: bool = False,
    train_command: Sequence[str] = (sys.executable, "train.py"),
    executor_params: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Expand the sweep file `spec` and train its unfinished runs; 0 when every run is done.

    `--dry-run` prints one line per run, `NAME<TAB>OVERRIDES-AS-JSON`, and launches nothing;
    `check` runs train.py's checks on every run (`check_runs`) and launches nothing.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; allowed: {', '.join(LAUNCHERS)}")
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    base, overrides = load_sweep(spec)
    runs = expand(base, overrides, workdir)
    if dry_run:
        for run in runs:
            echo(f"{run.name}\t{json.dumps(run.overrides)}")
        return 0
    if check:
        return check_runs(runs, echo)
    write_sweep_list(workdir, runs)
    unfinished = [run for run in runs if not run.finished]
    running = [run for run in unfinished if _running_elsewhere(run, echo)]
    todo = [run for run in unfinished if run not in running]
    elsewhere = f", {len(running)} running elsewhere" if running else ""
    echo(
        f"{len(runs)} runs, {len(runs) - len(unfinished)} finished{elsewhere}, {len(todo)} to train"
    )
    if launcher == "local":
        outcomes = run_local(todo, parallel=parallel, train_command=train_command, echo=echo)
    else:
        outcomes = run_submitit(
            todo,
            folder=Path(workdir) / "submitit",
            cluster="slurm" if launcher == "slurm" else "local",
            parallel=parallel,
            train_command=train_command,
            executor_params=executor_params,
            echo=echo,
        )
    # A run whose lock another launch took meanwhile exits 2 and is running, not failed.
    running += [o.run for o in outcomes if not o.run.finished and _running_elsewhere(o.run, echo)]
    failed = [o for o in outcomes if not o.run.finished and o.run not in running]
    for outcome in failed:
        run = outcome.run
        why = f"exit {outcome.returncode}" if outcome.returncode else "exit 0 without done.json"
        echo(f"--- FAILED {run.name}: {why}, log {run.log_path}")
        if outcome.log_tail:
            echo(outcome.log_tail)
    finished = sum(run.finished for run in runs)
    elsewhere = f", {len(running)} running elsewhere" if running else ""
    echo(f"{finished}/{len(runs)} runs finished{elsewhere}")
    return 1 if failed else 0


def write_sweep_list(workdir: str | os.PathLike, runs: Sequence[Run]) -> None:
    """`workdir`/sweep.json: every run of the sweep by name, with its base and overrides, so
    that a report lists the runs that have not started yet too."""
    listed = [{"name": r.name, "base": r.base, "overrides": r.overrides} for r in runs]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    path = Path(workdir) / SWEEP_NAME
    path.with_suffix(".tmp").write_text(json.dumps({"runs": listed}, indent=1) + "\n")
    os.replace(path.with_suffix(".tmp"), path)


def _running_elsewhere(run: Run, echo: Callable[[str], None]) -> bool:
    """Whether another process holds the run's workdir (a launch of this sweep still going)."""
    status = run_status(run.workdir)
    if status.state == "running":
        echo(f"running elsewhere {run.name} ({status.holder.describe()})")
    return status.state == "running"

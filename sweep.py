"""Launch a sweep of training runs.

    python sweep.py --sweep=configs/sweeps/NAME.py[:ARG] --workdir=DIR [--launcher=...]
        [--parallel=N] [--dry-run] [--check]

Each run trains with train.py in DIR/RUN-NAME; finished runs (with a done.json) are skipped, so
the same command resumes an interrupted sweep. `--dry-run` lists the runs; `--check` runs
every check train.py makes on each run (config, model keywords, dataset, workdir) and lists the
ones that would fail. Exit code 0 when every run finished (or passed the checks), 1 when some
failed, 2 on bad input, 130 after Ctrl-C (the running trainings save first). See
archs/training/sweep.py.
"""

import sys

from absl import app, flags

from archs.cli_errors import ExitCode, first_line
from archs.training import console, sweep

_SWEEP = flags.DEFINE_string("sweep", None, "sweep file with its argument: PATH[:ARG]")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory holding one workdir per run")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", list(sweep.LAUNCHERS), "how runs are launched")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "runs at once (local) or SLURM array parallelism")
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "print each run's name and overrides, then exit")
_CHECK = flags.DEFINE_bool("check", False, "check every run as train.py would, then exit")
_PARTITION = flags.DEFINE_string("slurm_partition", None, "SLURM partition")
_TIMEOUT = flags.DEFINE_integer("timeout_min", 60 * 24, "submitit job time limit in minutes")
_GPUS = flags.DEFINE_integer("gpus_per_run", 1, "GPUs per run (submitit launchers)")
_CPUS = flags.DEFINE_integer("cpus_per_run", 8, "CPU cores per run (submitit launchers)")
flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CHECK.value and not flags.FLAGS["verbosity"].present:
        console.quiet_library_logs()
    params = {
        "timeout_min": _TIMEOUT.value,
        "gpus_per_node": _GPUS.value,
        "cpus_per_task": _CPUS.value,
    }
    if _PARTITION.value:
        params["slurm_partition"] = _PARTITION.value
    try:
        return sweep.run_sweep(
            _SWEEP.value,
            _WORKDIR.value,
            launcher=_LAUNCHER.value,
            parallel=_PARALLEL.value,
            dry_run=_DRY_RUN.value,
            check=_CHECK.value,
            executor_params=params,
        )
    except ValueError as error:
        print(f"sweep.py: error: {first_line(error)}", file=sys.stderr)
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    app.run(main)

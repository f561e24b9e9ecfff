"""Train or evaluate a registered model on a tfds dataset, on every device found.

    python train.py --config=configs/cifar10.py[:MODEL[,RECIPE]] --workdir=DIR [--config.KEY=VALUE]
        [--config.model_kwargs.KEYWORD=VALUE] [--check] [--verbosity=0]

Re-running the same command resumes from DIR's latest checkpoint. `--check` checks everything
(config, model and its keywords, dataset, workdir), prints the plan and exits without writing
or compiling anything. Exit status: 0 when the run completes (or was already complete, or
`eval_only` evaluated), 1 when the run cannot go on (a non-finite loss, a full disk: one line
saying what to do), 2 on bad input (one line, nothing written), 75 after a SIGTERM and 130
after Ctrl-C (both save a checkpoint first; run the same command to resume). Logs of the
libraries are quiet unless --verbosity is given.

Several processes (one per host or per GPU) join through `jax.distributed`: detected under
SLURM, Open MPI and Cloud TPU, or given as --coordinator_address, --num_processes, --process_id.
"""

import sys

from absl import app, flags

from archs.cli_errors import ExitCode, first_line
from archs.training import console
from archs.training.errors import ConfigError, RunError
from archs.training.overrides import load_config, split_config_args

_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and logs go")
_CHECK = flags.DEFINE_bool("check", False, "check the run, print its plan, write nothing")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "multi-process: HOST:PORT")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "multi-process: how many")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "multi-process: this one's index")

_config_args: list[str] = []


def _fail(message: str, status: int = ExitCode.BAD_INPUT) -> None:
    print(f"train.py: error: {first_line(message)}", file=sys.stderr)
    sys.exit(status)


def _parse(argv: list[str]) -> list[str]:
    """absl's parsing of the other flags; the --config arguments are `load_config`'s. Bad flags
    exit 2 with one line."""
    config_args, rest = split_config_args(argv[1:])
    _config_args[:] = config_args
    try:
        rest = flags.FLAGS([argv[0], *rest])
    except flags.Error as e:
        _fail(str(e))
    if not config_args or not _WORKDIR.value:
        _fail("--config and --workdir are required")
    return rest


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
        console.quiet_library_logs()
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        from archs.training import EXIT_CODES, plan, train_and_evaluate
        from archs.training.parallel import initialize_distributed

        config = load_config(_config_args)
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        if _CHECK.value:
            console.say(plan.describe(plan.plan_run(config, _WORKDIR.value)))
            console.say("checks passed; nothing was written")
            sys.exit(ExitCode.COMPLETE)
        status = train_and_evaluate(config, _WORKDIR.value, argv=sys.argv)
    except ConfigError as e:
        _fail(str(e))
    except RunError as e:
        _fail(str(e), ExitCode.RUN_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted before the run started; nothing to save", ExitCode.INTERRUPTED)
    sys.exit(EXIT_CODES[status])


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)

"""Train or evaluate a registered model on a tfds dataset, on every device found.

    python train.py --config=configs/cifar10.py[:MODEL[,RECIPE]] --workdir=DIR [--config.KEY=VALUE]

Re-running the same command resumes from DIR's latest checkpoint. Exit status: 0 when the run
completes (or `eval_only` evaluated), 2 on bad input (one line on stderr, nothing written),
75 (EX_TEMPFAIL) after a SIGTERM-triggered checkpoint, so that launchers requeue the run, 1 when
the run cannot go on (a non-finite loss, a full disk: one line saying what to do).

Several processes (one per host or per GPU) join through `jax.distributed`: detected under
SLURM, Open MPI and Cloud TPU, or given as --coordinator_address, --num_processes, --process_id.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

EXIT_RUN_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file: configs/FILE.py[:ARG]")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and logs go")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "multi-process: HOST:PORT")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "multi-process: how many")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "multi-process: this one's index")


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> None:
    print(f"train.py: error: {message.strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(status)


def _loading_error(error: BaseException) -> str:
    """config_flags wraps errors in multi-line reports (paths tried, a traceback) whose last
    line says what went wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _parse(argv: list[str]) -> list[str]:
    """absl's parsing, but bad flags, config files or overrides exit 2 with one line."""
    try:
        rest = flags.FLAGS(argv)
        config = _CONFIG.value
        if config is not None:
            config.keys()  # a file that failed to load raises only when first used
    except Exception as e:  # flags.Error, or whatever loading the config file raised
        _fail(_loading_error(e))
    if config is None or not _WORKDIR.value:
        _fail("--config and --workdir are required")
    return rest


class _QuietCheckpointing(logging.Filter):
    """Drop orbax's per-save INFO records, which would bury the progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    from archs.training import PREEMPTED, ConfigError, RunError, train_and_evaluate
    from archs.training.parallel import initialize_distributed

    absl_logging.get_absl_handler().addFilter(_QuietCheckpointing())
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        status = train_and_evaluate(_CONFIG.value, _WORKDIR.value, argv=sys.argv)
    except ConfigError as e:
        _fail(str(e))
    except RunError as e:
        _fail(str(e), EXIT_RUN_ERROR)
    sys.exit(EXIT_PREEMPTED if status == PREEMPTED else 0)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)

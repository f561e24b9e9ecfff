"""Train or evaluate a registered model on a tfds dataset, on every device found.

    python train.py --config=configs/cifar10.py[:MODEL[,RECIPE]] --workdir=DIR [--config.KEY=VALUE]

Re-running the same command resumes from DIR's latest checkpoint. Exit status: 0 when the run
completes (or `eval_only` evaluated), 2 on bad input (one line on stderr, nothing written),
75 (EX_TEMPFAIL) after a SIGTERM-triggered checkpoint, so that launchers requeue the run.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file: configs/FILE.py[:ARG]")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and logs go")


def _fail(message: str) -> None:
    print(f"train.py: error: {message.strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _parse(argv: list[str]) -> list[str]:
    """absl's parsing, but bad flags, config files or overrides exit 2 with one line."""
    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # flags.Error, or whatever the config file's get_config raised
        _fail(str(e))
    if _CONFIG.value is None or not _WORKDIR.value:
        _fail("--config and --workdir are required")
    return rest


class _QuietCheckpointing(logging.Filter):
    """Drop orbax's per-save INFO records, which would bury the progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    from archs.training import PREEMPTED, ConfigError, train_and_evaluate

    absl_logging.get_absl_handler().addFilter(_QuietCheckpointing())
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        status = train_and_evaluate(_CONFIG.value, _WORKDIR.value, argv=sys.argv)
    except ConfigError as e:
        _fail(str(e))
    sys.exit(EXIT_PREEMPTED if status == PREEMPTED else 0)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)

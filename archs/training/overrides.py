"""Config files and their command-line overrides, as train.py and sweeps both spell them.

`--config=configs/FILE.py[:ARG]` names a config file (ml_collections' `config_flags`), and
`--config.KEY=VALUE` overrides one key; dotted keys reach nested fields, among them the model's
keywords (`--config.model_kwargs.shortcut=B`), which need not be in the file: any keyword of
the model's builder is accepted, and `registry.check_overrides` type-checks it when the run is
planned. `load_config` is the one parser: train.py calls it with its own arguments and
`sweep.py --check` with the arguments each run of a sweep would get, so what a sweep checks is
what train.py will accept.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from archs.cli_errors import first_line
from archs.training.errors import ConfigError

NESTED_FREE = "model_kwargs"  # the one field whose keys are not fixed by the config file
_CONFIG_ARG = re.compile(r"^--?config([=.]|$)")


def format_value(value: Any) -> str:
    """A value as `--config.KEY=VALUE` spells it: sequences as Python tuple literals."""
    return repr(_as_tuple(value)) if isinstance(value, tuple | list) else str(value)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, tuple | list) else value


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`{"model_kwargs.shortcut": "B"}` -> `["--config.model_kwargs.shortcut=B"]`."""
    return [f"--config.{key}={format_value(value)}" for key, value in overrides.items()]


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the `--config` arguments, the rest) of a command line, order kept in each."""
    config, rest = [], []
    pending = False
    for arg in argv:
        if pending or _CONFIG_ARG.match(arg):
            config.append(arg)
            pending = arg in ("--config", "-config")  # its value is the next argument
        else:
            rest.append(arg)
    return config, rest


def _parse(args: Sequence[str]) -> ml_collections.ConfigDict:
    values = flags.FlagValues()
    argv = ["train.py", *args]
    holder = config_flags.DEFINE_config_file(
        "config",
        None,
        "config file",
        flag_values=values,
        lock_config=False,
        accept_new_attributes=True,
        sys_argv=argv,
    )
    try:
        values(argv)
        config = holder.value
        if config is not None:
            config.keys()  # a file that failed to load raises only when first used
    except Exception as error:  # flags.Error, or whatever loading the config file raised
        raise ConfigError(_loading_error(error)) from None
    if config is None:
        raise ConfigError("--config is required: --config=configs/FILE.py[:ARG]")
    return config


def _loading_error(error: BaseException) -> str:
    """config_flags wraps errors in multi-line reports (paths tried, a traceback) whose last
    line says what went wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else type(error).__name__


def _check_keys(base: ml_collections.ConfigDict, args: Sequence[str]) -> None:
    """Every overridden key exists in the config file (or is a model keyword)."""
    for arg in args:
        if not arg.startswith(("--config.", "-config.")):
            continue
        path = arg.split("=", 1)[0].split(".", 1)[1]
        head, _, rest = path.partition(".")
        if head == NESTED_FREE and rest:
            continue
        node, walked = base, []
        for part in path.split("."):
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in keys:
                close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join('.'.join([*walked, c]) for c in close)}?"
                raise ConfigError(
                    f"unknown config key {'.'.join([*walked, part])!r}" + (hint if close else "")
                )
            node, walked = node[part], [*walked, part]
        if "=" in arg:
            _check_number(path, arg.split("=", 1)[1], node)


def _check_number(path: str, text: str, default: Any) -> None:
    """A number key's override parses as one (before config_flags' raw `int()` message)."""
    if isinstance(default, bool) or not isinstance(default, int | float):
        return
    kind, parse = ("an int", int) if isinstance(default, int) else ("a float", float)
    try:
        parse(text)
    except ValueError:
        raise ConfigError(
            f"--config.{path} must be {kind}, got {text!r} (the config has {default!r})"
        ) from None


def load_config(args: Sequence[str]) -> ml_collections.ConfigDict:
    """The config that `--config=FILE[:ARG] --config.KEY=VALUE ...` describe; ConfigError (one
    line) for a file that does not load, an unknown key or a value of the wrong type."""
    args = list(args)
    spec = [a for a in args if not a.startswith(("--config.", "-config."))]
    _check_keys(_parse(spec), args)
    config = _parse(args)
    if NESTED_FREE in config and not isinstance(config[NESTED_FREE], ml_collections.ConfigDict):
        raise ConfigError(f"{NESTED_FREE} must be a mapping of model keywords")
    return config


def config_from_overrides(base: str, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of a sweep run: its base (`configs/FILE.py[:ARG]`) with its overrides, parsed
    exactly as train.py parses the run's command line."""
    try:
        return load_config([f"--config={base}", *override_args(overrides)])
    except ConfigError as error:
        raise ConfigError(first_line(error)) from None

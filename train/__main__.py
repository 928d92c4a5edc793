"""Command line of the training job (console script ``convfirst-train``).

    python -m train --config configs/cpu_small.py:convfirst_atto --workdir runs/convfirst_atto \\
        [--config.data_dir=../shared/data/imagenette] [--config.num_epochs=20] ...

``--config`` names a Python file whose ``get_config()`` returns an ``ml_collections.ConfigDict``
(see configs/default.py for every key); ``FILE.py:ARG`` calls ``get_config(ARG)``, as in
ml_collections' ``config_flags`` (``configs/cpu_small.py:convnext_atto``). ``--config.KEY=VALUE``
overrides one key, parsed by ``ml_collections.config_flags`` as the type of the default (absl
flag syntax: ``--config.KEY VALUE`` also works, except for booleans, which take
``--config.KEY=false`` or ``--noconfig.KEY``; tuples as ``0.5,0.7`` or ``(0.5, 0.7)``). An
unknown or misspelt key stops with one error that lists the valid keys. Rerunning the same
command resumes from the newest checkpoint in ``--workdir``; resuming with other settings than
the stored ones is refused unless ``--config.allow_config_change=True``.

Every failure is one ``error: ...`` line on stderr with its exit code (``train.errors``): 0 done,
1 diverged (non-finite loss or state; the last good checkpoint is kept), 2 bad arguments,
config or data, 3 workdir unusable, 4 a write failed (disk full; the last complete checkpoint is
kept), 5 the workdir holds another run, 130 / 143 stopped by Ctrl-C / SIGTERM (after writing a
checkpoint), 70 an unexpected internal error (with its traceback).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import re
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

USAGE = ("usage: python -m train --config CONFIG.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]\n"
         "       (convfirst-train is the same command)")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.S)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the file ``spec`` names, or ``get_config(ARG)`` for ``FILE.py:ARG``
    (the folder above a ``configs`` package is put on sys.path, so that configs import
    ``configs.default``)."""
    path, *arg = spec.split(":", 1)
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"config file {path!r} does not exist; pass e.g. "
                         "--config configs/cpu_small.py:convfirst_atto")
    package_root = file.resolve().parent.parent
    if (file.resolve().parent / "__init__.py").exists() and str(package_root) not in sys.path:
        sys.path.insert(0, str(package_root))
    module_spec = importlib.util.spec_from_file_location(f"_convfirst_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config() function")
    config = module.get_config(*arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{spec}: get_config() must return an ml_collections.ConfigDict, "
                         f"got {type(config).__name__}")
    return config


def _valid_keys_message(config: ml_collections.ConfigDict) -> str:
    return "valid keys: " + ", ".join(sorted(config.keys()))


def check_keys(config: ml_collections.ConfigDict, path: str) -> None:
    """A config file may only set the keys of configs/default.py."""
    from configs import default  # noqa: PLC0415
    reference = default.get_config()
    extra = sorted(set(config.keys()) - set(reference.keys()))
    if extra:
        raise ValueError(f"{path} sets unknown config key(s) {', '.join(extra)}; "
                         + _valid_keys_message(reference))


def _overrides(args: Sequence[str]) -> dict[str, str | None]:
    """{KEY: text} of the ``--config.KEY=text`` / ``--config.KEY text`` arguments (last wins)."""
    found: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        match = _OVERRIDE.match(arg)
        if match:
            key, text = match.groups()
            if text is None and i + 1 < len(args) and not args[i + 1].startswith("-"):
                text = args[i + 1]
            found[key] = text
    return found


def _apply_overrides(config: ml_collections.ConfigDict, args: list[str]) -> None:
    """Parse ``--config.KEY=VALUE`` arguments into ``config`` (ml_collections.config_flags);
    any other argument, an unknown key or a value of the wrong type is one ValueError."""
    overrides = _overrides(args)
    for key in overrides:
        if key not in config:
            close = difflib.get_close_matches(key, list(config.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; " + _valid_keys_message(config))
    argv = ["train", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=argv)
    try:
        rest = values(argv)[1:]
    except flags.IllegalFlagValueError as e:
        key = next((k for k in overrides if f"--config.{k}=" in str(e)), None)
        if key is None:
            raise ValueError(str(e)) from None
        current = config[key]
        raise ValueError(f"--config.{key}={overrides[key]!r}: expected a value of type "
                         f"{type(current).__name__} (the default is {current!r})") from None
    except flags.Error as e:  # an unknown --flag
        raise ValueError(f"{e}\n{USAGE}") from None
    if rest:
        raise ValueError(f"unknown argument {rest[0]!r} (a boolean key is set with "
                         f"--config.KEY=true / false)\n{USAGE}")


def build_config(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
    """Parse argv into a locked, key-checked config and the workdir."""
    paths = flags.FlagValues()
    flags.DEFINE_string("config", None, "config file (FILE.py or FILE.py:ARG)", flag_values=paths)
    flags.DEFINE_string("workdir", None, "run directory", flag_values=paths)
    try:
        rest = paths(["train", *argv], known_only=True)[1:]
    except flags.Error as e:  # e.g. "--workdir" without a value
        raise ValueError(f"{e}\n{USAGE}") from None
    if paths.config is None or paths.workdir is None:
        raise ValueError(f"--config and --workdir are required\n{USAGE}")
    config = load_config_file(paths.config)
    check_keys(config, paths.config)
    _apply_overrides(config, rest)  # locks the config
    return config, paths.workdir


def _print_help() -> None:
    from train import errors  # noqa: PLC0415

    print(USAGE)
    try:
        from configs import default  # noqa: PLC0415
        print("\nconfig keys (defaults from configs/default.py):")
        for k, v in sorted(default.get_config().items()):
            print(f"  {k} = {v!r}")
    except ImportError:
        pass
    print("\nexit codes:")
    for code, meaning in sorted(errors.EXIT_CODES.items()):
        print(f"  {code:3d}  {meaning}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see train/errors.py)."""
    from train import errors  # noqa: PLC0415  (no jax)

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        try:
            _print_help()
            sys.stdout.flush()
        except BrokenPipeError:  # `--help | head`: the reader is gone, which is fine
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return errors.EXIT_OK
    debug = os.environ.get("CONVFIRST_DEBUG") == "1"
    try:
        config, workdir = build_config(argv)
    except ValueError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT

    from convfirst_jax import host_memory  # noqa: PLC0415  (no jax)
    host_memory.reuse_host_memory()  # before JAX starts its CPU client
    from train import loop, runtime  # noqa: PLC0415  (imports jax: after the argument checks)

    try:
        runtime.maybe_initialize_distributed()
        loop.train_and_evaluate(config, workdir)
    except errors.TrainError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C before the step loop, or a second one: no checkpoint
        print("error: stopped at once by Ctrl-C (no checkpoint of the current step); rerun the "
              "same command to resume from the last checkpoint", file=sys.stderr)
        return errors.EXIT_SIGINT
    except Exception:  # noqa: BLE001  (a bug: keep its traceback, but not exit 1 = diverged)
        import traceback  # noqa: PLC0415
        traceback.print_exc()
        print(f"error: internal error (exit {errors.EXIT_INTERNAL}); please report the traceback "
              "above", file=sys.stderr)
        return errors.EXIT_INTERNAL
    return errors.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

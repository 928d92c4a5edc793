"""Command line of the training job (console script ``convfirst-train``).

    python -m train --config configs/convfirst_atto_cpu.py --workdir runs/convfirst_atto \\
        [--config.data_dir=../shared/data/imagenette] [--config.num_epochs=20] ...

``--config`` names a Python file whose ``get_config()`` returns an ``ml_collections.ConfigDict``
(see configs/default.py for every key). ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``)
overrides one key; the value is parsed as the type of the default (bool, int, float, str,
tuple). An unknown or misspelt key stops with one error that lists the valid keys. Rerunning
the same command resumes from the newest checkpoint in ``--workdir``; resuming with other
settings than the stored ones is refused unless ``--config.allow_config_change=True``.

Every failure is one ``error: ...`` line on stderr with its exit code (``train.errors``): 0 done,
1 diverged (non-finite loss or state; the last good checkpoint is kept), 2 bad arguments,
config or data, 3 workdir unusable, 4 a write failed (disk full; the last complete checkpoint is
kept), 5 the workdir holds another run, 130 / 143 stopped by Ctrl-C / SIGTERM (after writing a
checkpoint), 70 an unexpected internal error (with its traceback).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

USAGE = ("usage: python -m train --config CONFIG.py --workdir DIR [--config.KEY=VALUE ...]\n"
         "       (convfirst-train is the same command)")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Import ``path`` and return its ``get_config()`` (the repo root is put on sys.path)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"config file {path!r} does not exist; pass e.g. "
                         "--config configs/convfirst_atto_cpu.py")
    # Config files import ``configs.default``: make the package that holds them importable.
    package_root = file.resolve().parent.parent
    if (file.resolve().parent / "__init__.py").exists() and str(package_root) not in sys.path:
        sys.path.insert(0, str(package_root))
    spec = importlib.util.spec_from_file_location(f"_convfirst_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config() function")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config() must return an ml_collections.ConfigDict, "
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


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_value(key: str, text: str, current: Any) -> Any:
    """Parse ``text`` as the type of ``current`` (the config's value for ``key``)."""
    try:
        if isinstance(current, bool):
            return _parse_bool(text)
        if isinstance(current, int):
            value = ast.literal_eval(text)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(text)
            return value
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = tuple(p for p in text.split(",") if p.strip())
            if not isinstance(value, (tuple, list)):
                value = (value,)
            kind = type(current[0]) if current else None
            if kind in (int, float):
                value = tuple(kind(v) for v in value)
            return tuple(value)
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
    except (ValueError, SyntaxError, TypeError):
        pass
    raise ValueError(f"--config.{key}={text!r}: expected a value of type "
                     f"{type(current).__name__} (the default is {current!r})")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]
                    ) -> ml_collections.ConfigDict:
    """Set ``--config.KEY=VALUE`` overrides; an unknown key lists the valid ones."""
    for key, text in overrides:
        if key not in config:
            close = difflib.get_close_matches(key, list(config.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}; " + _valid_keys_message(config))
        with config.unlocked():
            config[key] = parse_value(key, text, config[key])
    return config


def parse_args(argv: Sequence[str]) -> tuple[str, str, list[tuple[str, str]]]:
    """Split argv into (config path, workdir, [(key, value) overrides])."""
    config_path = workdir = None
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    i = 0

    def value_of(flag: str) -> str:
        nonlocal i
        if "=" in args[i]:
            return args[i].split("=", 1)[1]
        if i + 1 >= len(args):
            raise ValueError(f"{flag} needs a value")
        i += 1
        return args[i]

    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name == "--config":
            config_path = value_of("--config")
        elif name == "--workdir":
            workdir = value_of("--workdir")
        elif name.startswith("--config."):
            overrides.append((name[len("--config."):], value_of(name)))
        else:
            raise ValueError(f"unknown argument {arg!r}\n{USAGE}")
        i += 1
    if config_path is None or workdir is None:
        raise ValueError(f"--config and --workdir are required\n{USAGE}")
    return config_path, workdir, overrides


def build_config(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
    """Parse argv into a locked, validated-keys config and the workdir."""
    config_path, workdir, overrides = parse_args(argv)
    config = load_config_file(config_path)
    check_keys(config, config_path)
    apply_overrides(config, overrides)
    config.lock()
    return config, workdir


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

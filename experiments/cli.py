"""What every binary shares: flag parsing that turns a bad `--config.*` override into one line naming
the key and the valid ones, and `main` wrappers that print `error: ...` (exit 2) instead of a
traceback for the errors users cause, and a resume hint (exit 130) on Ctrl-C."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing

from absl import app, flags

from jaxsae import config as config_lib


def config_key_problem(argv: list[str]) -> str | None:
    """The first `--config.a.b=v` override whose key is not a field of jaxsae.config.Config."""
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        dotted = arg[len("--config."):].split("=", 1)[0]
        cls, seen = config_lib.Config, []
        for part in dotted.split("."):
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                return f"config key {'.'.join(seen)!r} has no sub-keys (in {arg})"
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                under = ".".join(seen) or "the top level"
                return f"unknown config key {dotted!r} (in {arg}); valid keys under {under}: {', '.join(names)}"
            seen.append(part)
            cls = typing.get_type_hints(cls)[part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        problem = config_key_problem(argv)
        text = str(e).strip().splitlines()
        print(f"error: {problem or (text[-1] if text else type(e).__name__)}", file=sys.stderr)
        sys.exit(2)


def _own_errors() -> tuple[type[BaseException], ...]:
    """Errors jaxsae raises for users: their messages are one line that names the problem and the fix."""
    from jaxsae.data.store import StoreError
    from jaxsae.models.checkpoint_files import CheckpointFormatError
    from jaxsae.runlock import LockedError
    from jaxsae.train.checkpoint import CheckpointError
    from jaxsae.train.loop import TrainingError

    return (ValueError, FileNotFoundError, StoreError, CheckpointFormatError, LockedError, CheckpointError,
            TrainingError)


TRACEBACK_ENV = "JAXSAE_TRACEBACK"


def run(main) -> None:
    """app.run(main) with the parser above; user errors become one `error:` line."""

    def guarded(argv):
        logging.getLogger("jaxsae").setLevel(logging.INFO)
        for noisy in ("jax", "absl", "orbax"):  # backend probing and per-save checkpoint chatter
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - sorted below
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            if isinstance(e, _own_errors()):
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            if isinstance(e, (RuntimeError, OSError, MemoryError)):  # e.g. out of memory, a full disk
                lines = str(e).strip().splitlines()
                print(f"error: {type(e).__name__}: {lines[0] if lines else ''} (rerun with {TRACEBACK_ENV}=1 "
                      "for the traceback)", file=sys.stderr)
                sys.exit(1)
            raise  # a bug: keep the traceback

    app.run(guarded, flags_parser=parse_flags)

"""The `ipa` command: one thin argparse shell over the control plane.

Each subcommand lives in its own module under `adapter.cli` and exposes
`register(subparsers) -> None`; the parser it adds sets `func(args) -> int`.
A bad argument or a bad spec ends the command with one line on stderr and a
non-zero exit (`UsageError`), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from adapter.errors import UsageError

# Subcommand modules, in the order `ipa --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "models",
    "spec",
    "profile",
    "solve",
    "load",
    "predictor",
    "experiment",
    "report",
    "up",
    "status",
    "demo",
    "manifests",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipa", description=__doc__.splitlines()[0] if __doc__ else None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"adapter.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"adapter.cli.{name}":
                continue  # a subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"ipa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ipa solve --json | head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

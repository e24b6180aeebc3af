"""The `ascsharp` command registry and the argument types every stage shares.

Each stage declares its subcommands in its own `commands` module with `@command`; `ascsharp.cli`
imports them all and builds the parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], None]
Arguments = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, Arguments, Handler]] = {}


def command(name: str, help: str, arguments: Arguments):
    """Register `fn(args)` as subcommand `name`, with `arguments(parser)` declaring its options."""

    def wrap(fn: Handler) -> Handler:
        COMMANDS[name] = (help, arguments, fn)
        return fn

    return wrap


def clip_count(text: str) -> int | None:
    """A `--clips`-like value: a positive number of clips, or `all` (None)."""
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number or 'all'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be >= 1")
    return n


# Every figure option takes the same figure's paths in one or more formats (.png, .svg, .pdf).
def figure_option(p, name: str, what: str) -> None:
    p.add_argument(f"--{name}", type=Path, nargs="+", required=True, help=f"{what} (.png, .svg)")


def threads_option(p) -> None:
    """--threads: torch's CPU threads for the command (`ascsharp.cli.main` sets them)."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

"""`ascsharp`: one subcommand per workflow stage, so every rule is a single readable command.

Each subcommand can be run by hand (copy it from the rule's log), prints `--help`, and exits
non-zero with a one-line `ascsharp <cmd>: error: ...` naming the file or key on bad input.
The commands live with their stage (`ascsharp.<stage>.commands`); this module only gathers them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ascsharp.core.commands import COMMANDS

# The modules whose @command registrations make up `ascsharp`, in the order `--help` lists them.
COMMAND_MODULES = (
    "data.commands",
    "features.commands",
    "train.commands",
    "landscape.commands",
    "measures.commands",
    "views.commands",
    "analysis.commands",
    "analysis.report_commands",
)
for _module in COMMAND_MODULES:
    importlib.import_module(f"ascsharp.{_module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascsharp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(func=fn, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads:
        import os

        import torch

        # Never more threads than CPUs this process may use: `--cores 8` on a 2-core laptop
        # would otherwise oversubscribe every job and slow the whole run down.
        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))
    from ascsharp.core.io import Terminated, handle_termination, one_line

    try:
        with handle_termination():  # SIGTERM/SIGINT unwind like an error: temporaries removed
            args.func(args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        # One line naming the file or key; the traceback adds nothing for bad input.
        args._parser.exit(2, f"ascsharp {args.command}: error: {one_line(e)}\n")
    except Terminated as e:
        message = f"ascsharp {args.command}: {e}; temporary files removed\n"
        args._parser.exit(128 + e.signum, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command dispatcher behind ``python -m verifier_training`` (and any other registry).

A registry maps a command name to (module path, one-line help); each module has a
``main(argv) -> int`` and builds its flags on ``command_parser``. Modules are imported only
when their command runs, so a command that needs vLLM does not slow down one that does not.
"""

from __future__ import annotations

import argparse
import importlib
import sys

PROG = "python -m verifier_training"


def command_parser(command: str, doc: str | None, *, entry: str = PROG,
                   whole_doc: bool = False) -> argparse.ArgumentParser:
    """A command's parser: named as it is run (``entry command``), described by its module
    docstring's first paragraph (``whole_doc``: all of it, as written). The docs' CLI
    reference is generated from these parsers."""
    doc = doc or ""
    if whole_doc:
        return argparse.ArgumentParser(prog=f"{entry} {command}", description=doc,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(prog=f"{entry} {command}", description=doc.split("\n\n")[0])


def usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    lines = [f"usage: {prog} <command> [args]", "", "commands:"]
    width = max(map(len, commands))
    lines += [f"  {name:{width}s}  {help_}" for name, (_, help_) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None) -> int:
    """Run ``argv[0]``'s module with the rest; usage on no command, an unknown one or -h."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"unknown command {name!r}; valid commands: {', '.join(commands)}", file=sys.stderr)
        print(usage(prog, commands), file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return module.main(rest)

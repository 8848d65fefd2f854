"""mkdocs hook: the CLI reference, rendered from the argument parsers at build time.

``docs/reference/cli.md`` holds one marker per program (``<!-- cli:bon-server -->``, ...);
``on_page_markdown`` replaces each with the ``--help`` of every command of that program, so
the page cannot drift from the code. Nothing rendered is committed.

A program that cannot be rendered (an import error, a command that prints no help, a marker
left in the page) fails the build: a reference that silently loses a command is worse than
no build.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence

PAGE = "reference/cli.md"
WIDTH = "100"  # argparse wraps help at $COLUMNS: a fixed width keeps the page stable


class CLIReferenceError(RuntimeError):
    """A command's help could not be rendered."""


@contextlib.contextmanager
def _as_program(prog: str) -> Iterator[None]:
    """argparse names a parser without ``prog`` after sys.argv[0] and wraps at $COLUMNS."""
    saved_argv, saved_columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv = [prog]
    os.environ["COLUMNS"] = WIDTH
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns


def capture_help(main: Callable[[Sequence[str]], object], argv: Sequence[str], prog: str) -> str:
    """What ``main(argv)`` prints on stdout (``argv`` ends in ``--help``), from ``usage:`` on."""
    out = io.StringIO()
    with _as_program(prog), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        main(list(argv))  # --help exits
    text = out.getvalue()
    start = text.find("usage:")
    if start < 0:
        raise CLIReferenceError(f"`{prog} {' '.join(argv)}` printed no usage")
    return text[start:].rstrip()


def _block(title: str, summary: str, help_text: str) -> str:
    lead = f"{summary}\n\n" if summary else ""
    return f"### `{title}`\n\n{lead}```text\n{help_text}\n```\n"


def _subcommands(parser: object) -> dict[str, str]:
    """name -> help of an argparse parser's subcommands, in their order."""
    import argparse

    for action in parser._actions:  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: helps.get(name, "") for name in action.choices}
    return {}


def subcommands(module: str, prog: str) -> str:
    """Every subcommand of ``<module>.build_parser()``, each its ``main([name, "--help"])``."""
    cli = importlib.import_module(module)
    blocks = []
    for name, summary in _subcommands(cli.build_parser()).items():
        text = capture_help(cli.main, [name, "--help"], prog)
        blocks.append(_block(f"{prog} {name}", summary, text))
    if not blocks:
        raise CLIReferenceError(f"{prog} has no subcommands")
    return "\n".join(blocks)


def bon_server() -> str:
    return subcommands("bon_server.cli", "bon-server")


def loadtest() -> str:
    return subcommands("loadtest.cli", "python -m loadtest")


def package_commands(package: str) -> str:
    """Every command in ``<package>.__main__.COMMANDS`` (name -> (module path, help))."""
    try:
        commands = importlib.import_module(f"{package}.__main__").COMMANDS
    except (ImportError, AttributeError) as exc:
        raise CLIReferenceError(
            f"cannot read {package}.__main__.COMMANDS for the CLI reference: {exc!r}"
        ) from exc
    if not commands:
        raise CLIReferenceError(f"{package}.__main__.COMMANDS is empty")
    blocks = []
    for name, (module_path, summary) in commands.items():
        prog = f"python -m {package} {name}"
        try:
            # imported outside the capture: a library that logs on import (vLLM) keeps its
            # handlers on the real streams
            module = importlib.import_module(module_path)
        except ImportError as exc:
            raise CLIReferenceError(f"{prog}: cannot import {module_path}: {exc!r}") from exc
        blocks.append(_block(prog, summary, capture_help(module.main, ["--help"], prog)))
    return "\n".join(blocks)


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- cli:bon-server -->": bon_server,
    "<!-- cli:loadtest -->": loadtest,
    "<!-- cli:verifier_training -->": lambda: package_commands("verifier_training"),
    "<!-- cli:verifier_training.research -->": lambda: package_commands(
        "verifier_training.research"
    ),
}


def render(markdown: str) -> str:
    """The page with every marker replaced; a marker missing from the page is an error too."""
    for marker, make in MARKERS.items():
        if marker not in markdown:
            raise CLIReferenceError(f"{PAGE} lost its marker {marker}")
        markdown = markdown.replace(marker, make())
    return markdown


def on_page_markdown(markdown: str, page: object, **kwargs: object) -> str:
    if page.file.src_uri != PAGE:  # type: ignore[attr-defined]
        return markdown
    return render(markdown)

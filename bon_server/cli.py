"""`bon-server serve ...` -> Settings -> uvicorn.run(create_app(settings)).

Every Settings field is a flag (``--default-best-of 8``), with its description as
help; flags not given fall back to ``BON_*`` environment variables, then defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence

from pydantic import ValidationError

from .config import Settings


def _flag_type(annotation: object) -> tuple[object, dict]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    if args and typing.get_origin(annotation) is tuple:
        return str, {"help_suffix": " (comma-separated)"}
    if args:
        return _flag_type(args[0])
    return annotation, {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bon-server", description="Best-of-N inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible Best-of-N API")
    for name, field in Settings.model_fields.items():
        kind, extra = _flag_type(field.annotation)
        suffix = extra.pop("help_suffix", "")
        help_text = (field.description or name.replace("_", " ")) + suffix
        default = field.default if not isinstance(field.default, tuple) else ",".join(field.default)
        options = {"dest": name, "default": argparse.SUPPRESS, "help": f"{help_text} [{default}]"}
        if "action" not in extra and kind in (int, float, str):
            options["type"] = kind
        serve.add_argument("--" + name.replace("_", "-"), **options, **extra)
    serve.add_argument("--log-level", default="info", help="uvicorn and bon log level [info]")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(build_parser().parse_args(argv))
    args.pop("command")
    log_level = args.pop("log_level")
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"bon-server: {where}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


if __name__ == "__main__":
    main()

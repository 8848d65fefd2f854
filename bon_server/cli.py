"""`bon-server serve ...` -> Settings -> uvicorn serving create_app(settings).

Every Settings field is a flag (``--default-best-of 8``), with its description as
help; flags not given fall back to ``BON_*`` environment variables, then defaults.
``--api-key`` may be repeated (prefer ``BON_API_KEYS``: a command line is visible
to every user of the machine).

On SIGTERM (or Ctrl-C) the server drains: it stops accepting connections, answers
503 to new work and on ``/health``, gives what is in flight ``--shutdown-timeout``
seconds to finish, then aborts the rest and stops the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import typing
from collections.abc import Sequence

from pydantic import ValidationError

from .config import Settings

# list settings given one value per flag: `--api-key A --api-key B`
REPEATABLE = {"api_keys": "--api-key"}
# uvicorn cancels whatever is left this long after --shutdown-timeout (drain() aborts first)
SHUTDOWN_BACKSTOP_S = 5.0


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
        flags = ["--" + name.replace("_", "-")]
        if name in REPEATABLE:
            flags.insert(0, REPEATABLE[name])
            extra = {"action": "append", "metavar": "KEY"}
            options["help"] = field.description
        serve.add_argument(*flags, **options, **extra)
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
    configure_logging(log_level)

    from .app import create_app

    serve_forever(create_app(settings), settings, log_level)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the access log is already one JSON object per line: no prefix
    access = logging.getLogger("bon.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def serve_forever(app: object, settings: Settings, log_level: str) -> None:
    import uvicorn

    from .app import drain

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, draining the app when a shutdown signal arrives.

        uvicorn stops accepting connections and waits for the open ones; ``drain``
        runs beside it and, past ``--shutdown-timeout``, aborts the work still in
        flight so that its clients get a 503 rather than a dropped connection.
        uvicorn's own graceful timeout is a backstop a little later.
        """

        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.draining = True  # type: ignore[attr-defined]
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

        async def shutdown(self, sockets: list | None = None) -> None:
            drainer = asyncio.ensure_future(drain(app, settings.shutdown_timeout))  # type: ignore[arg-type]
            try:
                await super().shutdown(sockets)
            finally:
                drainer.cancel()

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # bon.access logs every request, with its id
        timeout_graceful_shutdown=settings.shutdown_timeout + SHUTDOWN_BACKSTOP_S,
    )
    server = DrainingServer(config)
    # Listen before the lifespan starts the engine, as vLLM's own server does: a port that is
    # taken fails at once rather than after the engine loads, and the engine's processes, which
    # bind ports of their own while they start, cannot take the one asked for in the meantime.
    sock = config.bind_socket()  # exits 3 with uvicorn's message when the port is taken
    sock.set_inheritable(False)  # uvicorn's workers would share it; the engine's processes must not
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed (engine, verifier)
        raise SystemExit(3)


if __name__ == "__main__":
    main()

"""The candidate page: ``GET /ui``, plain HTML, CSS and JavaScript read from this package.

No build step and nothing fetched from elsewhere: the page talks only to this server's
public API (``/v1/models``, ``/v1/bon/problem``, ``/v1/chat/completions`` with
``return_candidates``), with relative URLs. Its Content-Security-Policy allows scripts,
styles and connections to this origin alone, so an API key typed into the page can only
ever be sent here; the script builds the page with ``textContent``, never HTML strings,
so candidate text renders as text whatever it holds.

The page and its two assets are open (the guard lets ``/ui`` through without a key: the
page holds no data, and asks for the key itself when the API answers 401). ``--no-ui``
leaves the router out: ``/ui`` is then a 404 like any unknown path.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

PREFIX = "/ui"
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
PUBLIC_PATHS = frozenset({PREFIX, *(f"{PREFIX}/{name}" for name in ASSETS)})
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _read(name: str) -> bytes:
    return files(__package__).joinpath(name).read_bytes()


@router.get(PREFIX)
async def page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


def _asset_route(name: str, media_type: str) -> None:
    async def asset() -> Response:
        return Response(_read(name), media_type=f"{media_type}; charset=utf-8", headers=HEADERS)

    router.add_api_route(f"{PREFIX}/{name}", asset, methods=["GET"], name=name)


for _name, _type in ASSETS.items():
    _asset_route(_name, _type)

"""The dashboard (``GET /``) and the OpenAPI UI (``GET /docs``), both from files shipped in
the package: nothing is fetched from another site, so both work without a network.

With a token set, ``GET /?token=...`` answers with the token as an HttpOnly, SameSite=Strict
cookie and a redirect to ``/``; the browser then sends the cookie with every page, API call
and WebSocket of the dashboard (lattice.api.guard reads it).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from lattice.api.guard import TOKEN_COOKIE
from lattice.dashboard import STATIC_DIR, STATIC_PATH
from lattice.exceptions import NotFoundError

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard(request: Request, token: str | None = None) -> Response:
    if token is not None:
        # The guard has checked it (a wrong one never gets here when a token is set).
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return answer
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise NotFoundError("this installation has no built dashboard (see frontend/README.md)")
    return FileResponse(index, headers={"cache-control": "no-cache"})


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title="Lattice API",
        swagger_js_url=f"{STATIC_PATH}/vendor/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_PATH}/vendor/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_PATH}/favicon.svg",
    )

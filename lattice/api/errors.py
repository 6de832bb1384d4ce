"""Lattice errors become HTTP answers here, once: 404 unknown ids, 400 bad input, 403 what no
client may do. No answer echoes a client's input unencoded: details are made printable, and
FastAPI's own validation answer (422) leaves out the input it refused."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lattice.api.models.storable import printable
from lattice.exceptions import (
    ForbiddenError,
    LatticeError,
    LatticeInputError,
    LatticeUsageError,
    NotFoundError,
    TooLargeError,
)

log = logging.getLogger(__name__)


def status_for(exc: LatticeError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, TooLargeError):
        return 413
    if isinstance(exc, LatticeInputError):
        return 400
    if isinstance(exc, LatticeUsageError):
        return 409
    return 500


def _validation_detail(errors: Any) -> list[dict[str, Any]]:
    """Each validation error as type, location and message: the refused input and its
    context are left out (they may be large, or hold what cannot be encoded)."""
    return [
        {
            "type": str(error.get("type", "")),
            "loc": [printable(p) if isinstance(p, str) else p for p in error.get("loc", ())],
            "msg": printable(str(error.get("msg", ""))),
        }
        for error in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def on_lattice_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LatticeError)
        code = status_for(exc)
        detail = printable(str(exc))
        if code >= 500:
            log.error("request %s failed: %s", printable(request.url.path), detail)
        return JSONResponse({"status": "error", "detail": detail}, status_code=code)

    async def on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            {"status": "error", "detail": _validation_detail(exc.errors())}, status_code=422
        )

    app.add_exception_handler(LatticeError, on_lattice_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)

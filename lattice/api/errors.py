"""Lattice errors become HTTP answers here, once: 404 unknown ids, 400 bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lattice.exceptions import LatticeError, LatticeInputError, LatticeUsageError, NotFoundError

log = logging.getLogger(__name__)


def status_for(exc: LatticeError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, LatticeInputError):
        return 400
    if isinstance(exc, LatticeUsageError):
        return 409
    return 500


def install_error_handlers(app: FastAPI) -> None:
    async def on_lattice_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LatticeError)
        code = status_for(exc)
        if code >= 500:
            log.error("request %s failed: %s", request.url.path, exc)
        return JSONResponse({"status": "error", "detail": str(exc)}, status_code=code)

    app.add_exception_handler(LatticeError, on_lattice_error)

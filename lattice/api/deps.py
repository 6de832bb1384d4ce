"""Handlers reach long-lived parts through the app's lifespan state, never module globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from lattice.config.settings import ServerSettings
from lattice.core.orchestrator.orchestrator import Orchestrator


def get_orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.state.orchestrator
    return orchestrator


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.state.settings
    return settings


def ws_orchestrator(websocket: WebSocket) -> Orchestrator:
    orchestrator: Orchestrator = websocket.state.orchestrator
    return orchestrator


#: Handler parameter type: ``orch: Orch`` injects the app's orchestrator.
Orch = Annotated[Orchestrator, Depends(get_orchestrator)]

"""The app factory (spec/002 §2): built from a settings value; the lifespan owns the
orchestrator, the scheduler thread, the executor and the metrics pipeline, and hands them to
handlers as request state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from lattice import __version__
from lattice.api.errors import install_error_handlers
from lattice.api.guard import BodyLimit, TokenGuard
from lattice.api.origin import HostGuard
from lattice.api.redact import redacted_request_logs
from lattice.api.routes import dashboard, langgraph, queue, runs, worker, workflow
from lattice.config.settings import ServerSettings, is_loopback
from lattice.core.observer import EngineObserver
from lattice.core.orchestrator.orchestrator import Orchestrator
from lattice.core.resource.node import NodeResources
from lattice.core.run.log import EventStore
from lattice.core.store.factory import open_store
from lattice.dashboard import STATIC_DIR, STATIC_PATH
from lattice.executor.base import ExecutorBackend
from lattice.executor.factory import create_executor
from lattice.executor.sandbox.runner import SandboxRunner
from lattice.observability import Metrics, MetricsConfig, MetricsMiddleware

log = logging.getLogger(__name__)


def build_orchestrator(
    settings: ServerSettings,
    observer: EngineObserver,
    *,
    store: EventStore | None = None,
    executor: ExecutorBackend | None = None,
) -> Orchestrator:
    """Wire executor, sandbox and store for ``settings`` (not started); ``store`` and
    ``executor``, when given, are used instead of the ones the settings name."""
    if executor is None:
        # Always a runner: with a default of "none" a task may still ask for isolation itself.
        executor = create_executor(
            settings.executor,
            ray_address=settings.ray_address,
            ray_port=settings.ray_port,
            ray_node_ports=settings.ray_node_ports,
            num_cpus=settings.num_cpus,
            sandbox=SandboxRunner(settings.sandbox),
            join_grace=settings.join_grace if settings.executor == "ray" else None,
            state_dir=Path(settings.data_dir) if settings.data_dir else None,
        )
    local = None
    if settings.executor == "local" and settings.num_cpus is not None:
        local = NodeResources(
            cpu_count=settings.num_cpus, memory_bytes=psutil.virtual_memory().total
        )
    orchestrator = Orchestrator(
        executor,
        observer=observer,
        store=store or open_store(settings.store, settings.max_finished_runs, settings.max_run_age),
        local_resources=local,
        max_attempts=settings.max_attempts,
        priority_aging=settings.priority_aging or None,
        ray_head_port=settings.ray_port,
        max_workflow_code_bytes=settings.max_workflow_code_bytes,
    )
    # Not a constructor argument of the Orchestrator (rewritten elsewhere meanwhile).
    orchestrator.resource_manager.join_grace = settings.join_grace
    return orchestrator


def create_app(
    settings: ServerSettings | None = None,
    *,
    ray_head_port: int | None = None,
    metrics_enabled: bool | None = None,
    metrics_exporter: str | None = None,
    metrics_endpoint: str | None = None,
    store: EventStore | None = None,
    executor: ExecutorBackend | None = None,
) -> FastAPI:
    """Build the Lattice API app.

    ``settings`` carries everything; the keyword arguments of spec/002 §2.2 override it.
    ``store`` and ``executor`` hand in parts of the caller's own (tests, embedders): the app
    then uses that event store, and that executor, which it initializes but does not shut
    down (its owner does).
    Raises LatticeUsageError for unsafe or impossible settings (e.g. a public address without
    a token) and ValueError for a bad metrics exporter, before anything starts.
    """
    settings = settings or ServerSettings()
    overrides: dict[str, Any] = {
        "ray_port": ray_head_port,
        "metrics_enabled": metrics_enabled,
        "metrics_exporter": metrics_exporter,
        "metrics_endpoint": metrics_endpoint,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    settings.check()
    # A sandbox level this machine cannot provide (docker without an engine, ...) is refused
    # here, so `lattice start` says why in one line instead of failing in the lifespan.
    SandboxRunner.check_level(settings.sandbox.level)
    metrics_config = MetricsConfig(
        enabled=settings.metrics_enabled,
        exporter=settings.metrics_exporter,
        endpoint=settings.metrics_endpoint,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics = Metrics(metrics_config)
        orchestrator = build_orchestrator(
            settings, metrics.observer(), store=store, executor=executor
        )
        stack = ExitStack()
        try:
            stack.enter_context(redacted_request_logs())
            # Starting Ray takes seconds; keep the loop free meanwhile.
            await asyncio.to_thread(orchestrator.initialize)
            await orchestrator.start_monitor()
            yield {"orchestrator": orchestrator, "settings": settings, "metrics": metrics}
        finally:
            # Aborting open runs closes their logs, which ends every open WebSocket stream.
            orchestrator.cleanup(shutdown_executor=executor is None)
            if store is None:  # the store the settings named is the app's to close
                orchestrator.store.close()
            metrics.shutdown()
            stack.close()

    app = FastAPI(
        title="Lattice API",
        description="Task-level distributed runtime for LLM-agent workflows",
        version=__version__,
        lifespan=lifespan,
        # /docs is served from the package's own files (routes/dashboard.py), offline.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (workflow, langgraph, worker, runs, queue):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR, check_dir=False), name="ui")
    # Each add_middleware wraps the ones before it: the token check runs before anything
    # reads the body, the Host and Origin check before the token check (a page of another
    # site learns nothing, not even whether a token is set); CORS wraps them all, because a
    # browser's preflight never carries the token (CORS answers it without calling the app)
    # and a 401 must carry the CORS headers for the page to read it.
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, read_timeout=settings.body_timeout
    )
    if settings.token:
        app.add_middleware(TokenGuard, token=settings.token)
    app.add_middleware(
        HostGuard,
        loopback_only=is_loopback(settings.host),
        extra_hosts=settings.allowed_hosts,
        cors_origins=settings.cors_origins,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app

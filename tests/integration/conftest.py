"""Servers for the API, SDK, security and CLI tests. Each fixture that starts one also stops it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lattice.config.settings import ServerSettings
from tests.integration.server_fixture import (
    CORS_ORIGIN,
    TEST_MAX_BODY_BYTES,
    TEST_TOKEN,
    Gate,
    HeadProcess,
    InProcessServer,
    free_port,
    start_local_head,
)


@pytest.fixture(scope="module")
def api_server() -> Iterator[InProcessServer]:
    """One in-process server (local executor, metrics on) per test module."""
    settings = ServerSettings(
        executor="local", metrics_enabled=True, max_body_bytes=TEST_MAX_BODY_BYTES
    )
    with InProcessServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def token_server() -> Iterator[InProcessServer]:
    """An in-process server that requires TEST_TOKEN and allows the CORS_ORIGIN browser origin."""
    settings = ServerSettings(executor="local", token=TEST_TOKEN, cors_origins=(CORS_ORIGIN,))
    with InProcessServer(settings) as server:
        yield server


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module")
def local_head() -> Iterator[HeadProcess]:
    """A local-executor head in a child process, shared by a test module."""
    head = start_local_head()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[HeadProcess]:
    """``lattice start --head --executor ray --num-cpus 2`` in a child process (starts a Ray
    head of its own on a free port). Takes tens of seconds, hence once per module."""
    from tests.conftest import require_module

    require_module("ray", "the Ray head")
    port, ray_port = free_port(), free_port()
    head = HeadProcess(
        [
            "start",
            "--head",
            "--executor",
            "ray",
            "--port",
            str(port),
            "--ray-port",
            str(ray_port),
            "--num-cpus",
            "2",
        ],
        port=port,
    )
    head.start(timeout=180)
    try:
        yield head
    finally:
        head.stop(timeout=90)

"""The security suite runs against real heads: an in-process one on the local executor and a
``lattice start --head --executor ray`` child with its own Ray head; ``head`` is each in turn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lattice.config.settings import ServerSettings
from tests.conftest import require_module
from tests.integration.conftest import api_server, gate, token_server
from tests.integration.server_fixture import HeadProcess, InProcessServer, free_port
from tests.security.heads import BODY_TIMEOUT, IDLE_TIMEOUT, MAX_WORKFLOW_CODE_BYTES, Head

__all__ = ["api_server", "gate", "head", "token_server"]


@pytest.fixture(scope="package", params=["local", "ray"])
def head(request: pytest.FixtureRequest) -> Iterator[Head]:
    if request.param == "local":
        settings = ServerSettings(
            executor="local",
            body_timeout=BODY_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
            max_workflow_code_bytes=MAX_WORKFLOW_CODE_BYTES,
        )
        with InProcessServer(settings) as server:
            yield Head("local", server.url)
        return
    require_module("ray", "the Ray head")
    port = free_port()
    args = ["start", "--head", "--executor", "ray", "--port", str(port)]
    args += ["--ray-port", str(free_port()), "--num-cpus", "2"]
    args += ["--body-timeout", str(BODY_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT)]
    args += ["--max-workflow-code-mb", str(MAX_WORKFLOW_CODE_BYTES / 1024 / 1024)]
    process = HeadProcess(args, port=port)
    process.start(timeout=180)
    try:
        yield Head("ray", process.url)
    finally:
        process.stop(timeout=90)

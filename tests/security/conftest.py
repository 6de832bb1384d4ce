"""The security suite runs against the same real servers as the integration tests."""

from __future__ import annotations

from tests.integration.conftest import api_server, gate, token_server

__all__ = ["api_server", "gate", "token_server"]

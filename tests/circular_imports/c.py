"""Enters the cycle through ``b``."""

from __future__ import annotations

from tests.circular_imports.b import from_b


def from_c(params: dict[str, int]) -> int:
    return from_b(params) * 10

"""The other half of the cycle (see the package docstring)."""

from __future__ import annotations

from tests.circular_imports.a import VALUE_A

# Some work at import time, as a real package does, so that threads overlap in here.
_TABLE = [i * VALUE_A for i in range(50_000)]
VALUE_B = VALUE_A + 1


def from_b(params: dict[str, int]) -> int:
    return VALUE_B + len(_TABLE) + params.get("x", 0)

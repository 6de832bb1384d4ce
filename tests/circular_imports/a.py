"""Half of the cycle (see the package docstring)."""

from __future__ import annotations

VALUE_A = 1

from tests.circular_imports.b import VALUE_B  # noqa: E402 - after VALUE_A, which b needs


def from_a(params: dict[str, int]) -> int:
    return VALUE_A + VALUE_B + params.get("x", 0)

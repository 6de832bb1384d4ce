"""return_free_memory: a freed heap goes back to the OS (glibc)."""

from __future__ import annotations

import platform

import psutil
import pytest

from lattice.utils.memory import return_free_memory

MB = 1024 * 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_pages_under_survivors_are_returned_to_the_os() -> None:
    process = psutil.Process()
    # 2 KiB blocks come from malloc's heap (above pymalloc's 512 B, below mmap's threshold).
    blocks = [bytes(2048) for _ in range(100_000)]
    # A few survivors spread over the heap (what outlives a retired run): free() alone gives
    # nothing back, since the heap's top is still in use.
    survivors = [*blocks[::1000], bytes(2048)]
    held = process.memory_info().rss
    del blocks
    untrimmed = process.memory_info().rss
    assert return_free_memory()
    trimmed = process.memory_info().rss

    assert held - untrimmed < 20 * MB
    assert untrimmed - trimmed > 100 * MB, (held // MB, untrimmed // MB, trimmed // MB)
    assert len(survivors) == 101

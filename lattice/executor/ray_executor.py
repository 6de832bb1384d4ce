"""The spec-named entry point (spec/001 §3.4.2) of the Ray executor, which lives in
:mod:`lattice.executor.ray`."""

from lattice.executor.ray.executor import RayExecutor

__all__ = ["RayExecutor"]

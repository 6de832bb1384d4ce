"""Everything of Lattice that speaks to Ray: the executor, its task hosts and their
connections, cluster membership, the Ray node a head or worker starts, and its ports.

Nothing outside this package imports Ray (``lattice.executor.ray_executor`` is the spec-named
entry point and re-exports :class:`RayExecutor`).
"""

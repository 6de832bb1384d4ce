"""Sandboxed task execution (spec/001 §3.4.4); see docs/sandbox.md.

``policy``          levels and limits (values)          ``runner``     SandboxRunner, the entry point
``forkserver``      one per runner, forks supervisors   ``child``      supervisor and task process
``confine``         rlimits, capabilities, Landlock, seccomp, applied in the task process
``seccomp_policy``  the filter's rules                  ``landlock``   Landlock bindings
``cgroup``          per-task pids cgroups               ``verdict``    how a task ended, as an error
``wire``            what crosses the boundary (JSON outcomes, SealedValue, frames)
``docker``          the docker level (Engine API)       ``container``  what runs in the container

Nothing is imported here: the container imports single modules of this package.
"""

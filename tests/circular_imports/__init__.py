"""A package whose modules import each other, for the test that many threads of a fresh task
host import it at once (tests/integration/test_fractional_cpus.py).

The cycle is sound for one thread: importing any module starts the package, which imports
``a`` first; ``a`` defines ``VALUE_A`` before it imports ``b``, and ``b`` needs only
``VALUE_A``. Two threads that enter the cycle from different ends at the same moment each hold
one module's import lock and wait for the other's; Python breaks that deadlock by handing one
of them the other's module half-initialised, and ``from ... import`` then fails ("partially
initialized module ... most likely due to a circular import").
"""

from tests.circular_imports import a  # noqa: F401 - the package's own entry order

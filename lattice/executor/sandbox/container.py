"""What runs inside a docker sandbox container: ``python -m lattice.executor.sandbox.container``.

Imports nothing beyond the standard library, cloudpickle and lattice's executor modules, so
an image with a matching Python (the default: ``python:X.Y-slim``) is enough; the docker
sandbox mounts lattice and cloudpickle from the host read-only. Limits are the engine's
(memory and pids cgroups, ulimits), so this only runs the task and writes the outcome.
"""

from __future__ import annotations

import os
import sys

import cloudpickle

from lattice.executor.base import TaskOutcome
from lattice.executor.runner import error_info, execute
from lattice.executor.sandbox.wire import encode_outcome, unseal_submission

IO_DIR = "/lattice/io"
SUBMISSION = "submission.pkl"
OUTCOME = "outcome.json"
#: the server's Python "major.minor": pickled functions are bytecode of that version
PYTHON_VERSION_ENV = "LATTICE_PYTHON_VERSION"


class ImageMismatchError(RuntimeError):
    """The image's Python cannot load what the server pickled."""


def main(io_dir: str = IO_DIR) -> int:
    with open(os.path.join(io_dir, SUBMISSION), "rb") as f:
        payload = f.read()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = os.environ.get(PYTHON_VERSION_ENV, here)
    try:
        if wanted != here:
            raise ImageMismatchError(
                f"the docker image runs Python {here} but the server runs Python {wanted}; "
                f"use an image with Python {wanted} (e.g. python:{wanted}-slim)"
            )
        submission = unseal_submission(cloudpickle.loads(payload))
    except BaseException as exc:  # noqa: BLE001 - e.g. a module of the task is missing in the image
        outcome = TaskOutcome(error=error_info(exc, skip_frames=0))
    else:
        outcome = execute(submission, set_gpu_env=True)
    data = encode_outcome(outcome)
    tmp = os.path.join(io_dir, OUTCOME + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(io_dir, OUTCOME))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

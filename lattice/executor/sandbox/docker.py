"""The docker level: each task in its own container, through the Docker Engine HTTP API.

No docker SDK: httpx speaks to the engine's unix socket (``DOCKER_HOST=unix://...`` or
``/var/run/docker.sock``). The container has no network, a read-only root filesystem, no
capabilities, no-new-privileges, a private ``/tmp`` (tmpfs), memory / pids / CPU limits and
ulimits. The task's submission goes in and its outcome comes out through a per-task host
directory mounted at ``/lattice/io``; lattice and cloudpickle are mounted read-only from the
host, so the image needs only a Python of the server's minor version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import stat
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import cloudpickle
import httpx

import lattice
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.executor.sandbox import container, verdict
from lattice.executor.sandbox.live import LiveChild
from lattice.executor.sandbox.wire import ChildEnd, decode_outcome
from lattice.vocabulary import SandboxSpec, default_docker_image

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/docker.sock"
_MB = 1024 * 1024
_NOBODY = "65534:65534"
_LOG_TAIL_LINES = 200

# Imports lattice's executor modules without running ``lattice/__init__.py``: that pulls in
# the client (httpx, pydantic, ...), which the image does not need to have.
_BOOTSTRAP = """
import sys, types
package = types.ModuleType("lattice")
package.__path__ = ["/lattice/lib/lattice"]
sys.modules["lattice"] = package
from lattice.executor.sandbox.container import main
sys.exit(main())
"""


class DockerError(Exception):
    """The engine is missing, refused or failed a request."""


def docker_socket() -> Path:
    """The engine's unix socket: ``DOCKER_HOST=unix://...`` or the default path.

    Raises DockerError for a ``DOCKER_HOST`` that is not a unix socket: the task's files are
    exchanged through a host directory, which only a local engine can mount.
    """
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return Path(DEFAULT_SOCKET)
    if host.startswith("unix://"):
        return Path(host[len("unix://") :])
    raise DockerError(
        f"DOCKER_HOST={host} is not a unix socket; the docker sandbox needs a local engine"
    )


def docker_available(socket_path: str | Path | None = None) -> str | None:
    """None if a Docker engine answers on the local socket, else the reason it does not."""
    try:
        path = Path(socket_path) if socket_path is not None else docker_socket()
    except DockerError as exc:
        return str(exc)
    if not path.exists():
        return f"no Docker engine socket at {path} (is Docker installed and running?)"
    try:
        with _client(path, timeout=3.0) as client:
            response = client.get("/_ping")
    except httpx.HTTPError as exc:
        return f"the Docker engine at {path} did not answer: {exc}"
    if response.status_code != 200:
        return f"the Docker engine at {path} answered /_ping with HTTP {response.status_code}"
    return None


def _client(path: Path, timeout: float | None) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(path)),
        base_url="http://docker",
        timeout=httpx.Timeout(timeout, connect=5.0),
    )


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        response.read()  # a streamed response has not read its error body yet
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise DockerError(f"{what}: HTTP {response.status_code}: {message}")
    return response


def _demux_logs(data: bytes) -> str:
    """Docker's multiplexed log stream (8-byte frame headers) as text."""
    out = bytearray()
    pos = 0
    while pos + 8 <= len(data):
        (size,) = struct.unpack_from(">I", data, pos + 4)
        out += data[pos + 8 : pos + 8 + size]
        pos += 8 + size
    return out.decode("utf-8", "replace")


def _read_outcome(io_dir: str) -> bytes | None:
    # O_NOFOLLOW: the container owns this directory and could plant a symlink to a host file.
    try:
        fd = os.open(os.path.join(io_dir, container.OUTCOME), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


class DockerSandbox:
    """Runs one submission in a fresh container and removes it afterwards."""

    def __init__(self, socket_path: str | Path | None = None) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else docker_socket()

    def run(
        self,
        submission: TaskSubmission,
        spec: SandboxSpec,
        live: LiveChild,
        *,
        open_values: bool,
        allow_pull: bool = True,
    ) -> TaskOutcome:
        """Blocks until the container exits. Never raises for the task's failures or the
        engine's: both come back as the outcome's error."""
        io_dir = tempfile.mkdtemp(prefix="lattice-docker-")
        try:
            return self._run(submission, spec, live, open_values, allow_pull, io_dir)
        except (DockerError, httpx.HTTPError) as exc:
            return TaskOutcome(
                error=TaskErrorInfo.framework(
                    verdict.SANDBOX_ERROR, f"the docker sandbox failed: {exc}"
                )
            )
        finally:
            shutil.rmtree(io_dir, ignore_errors=True)

    def _run(
        self,
        submission: TaskSubmission,
        spec: SandboxSpec,
        live: LiveChild,
        open_values: bool,
        allow_pull: bool,
        io_dir: str,
    ) -> TaskOutcome:
        image = spec.docker_image or default_docker_image()
        with open(os.path.join(io_dir, container.SUBMISSION), "wb") as f:
            f.write(cloudpickle.dumps(submission))
        user = self._prepare_io_dir(io_dir)
        with _client(self.socket_path, timeout=None) as client:
            self._ensure_image(client, image, allow_pull)
            body = self._container_body(submission, spec, image, io_dir, user)
            created = _check(
                client.post("/containers/create", json=body), "creating the container"
            ).json()
            cid = str(created["Id"])
            try:
                # A kill before start fails (nothing runs yet), so cancellation is checked
                # again on both sides of the start.
                live.arm(lambda: self._kill(cid))
                if live.cancelled:
                    return verdict.cancelled()
                _check(client.post(f"/containers/{cid}/start"), "starting the container")
                if live.cancelled:
                    self._kill(cid)
                waited = _check(
                    client.post(f"/containers/{cid}/wait"), "waiting for the container"
                ).json()
                live.finish()
                status = int(waited.get("StatusCode", -1))
                state = _check(
                    client.get(f"/containers/{cid}/json"), "inspecting the container"
                ).json()
                oom = bool(state.get("State", {}).get("OOMKilled"))
                logs = client.get(
                    f"/containers/{cid}/logs",
                    params={"stdout": 1, "stderr": 1, "tail": _LOG_TAIL_LINES},
                )
                output = _demux_logs(logs.content) if logs.status_code == 200 else ""
            finally:
                live.finish()
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/containers/{cid}", params={"force": "true", "v": "true"})
        if output:
            sys.stderr.write(output)
        return self._judge(spec, status, oom, output, _read_outcome(io_dir), open_values)

    @staticmethod
    def _prepare_io_dir(io_dir: str) -> str:
        """Who the task runs as, with ``io_dir`` writable for it: the server's own user, or
        nobody when the server is root (root in a container is still root on bind mounts)."""
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        uid, gid = (int(x) for x in _NOBODY.split(":"))
        os.chown(io_dir, uid, gid)
        return _NOBODY

    def _ensure_image(self, client: httpx.Client, image: str, allow_pull: bool) -> None:
        if client.get(f"/images/{image}/json").status_code == 200:
            return
        if not allow_pull:
            raise DockerError(
                f"image {image!r} is not present on the engine; the server pulls only its own "
                "configured image, so pull this one (docker pull) or ask for the server's"
            )
        params = {"fromImage": image}
        if "@" not in image and ":" in image.rsplit("/", 1)[-1]:
            repo, _, tag = image.rpartition(":")
            params = {"fromImage": repo, "tag": tag}
        with client.stream("POST", "/images/create", params=params) as response:
            _check(response, f"pulling {image}")
            for line in response.iter_lines():
                if line.strip() and "error" in (doc := json.loads(line)):
                    raise DockerError(f"pulling {image}: {doc['error']}")

    @staticmethod
    def _container_body(
        submission: TaskSubmission, spec: SandboxSpec, image: str, io_dir: str, user: str
    ) -> dict[str, Any]:
        lattice_dir = Path(lattice.__file__).resolve().parent
        cloudpickle_dir = Path(cloudpickle.__file__).resolve().parent
        env = [
            "PYTHONPATH=/lattice/lib",
            "HOME=/tmp",
            "TMPDIR=/tmp",
            "LANG=C.UTF-8",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",  # output up to a crash reaches the logs
            f"{container.PYTHON_VERSION_ENV}={sys.version_info.major}.{sys.version_info.minor}",
        ]
        host: dict[str, Any] = {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Privileged": False,
            "Init": True,  # the task is not PID 1, which the kernel shields from SIGXCPU
            "IpcMode": "private",
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.max_file_size_mb or 1024}m"},
            "Binds": [
                f"{io_dir}:{container.IO_DIR}:rw",
                f"{lattice_dir}:/lattice/lib/lattice:ro",
                f"{cloudpickle_dir}:/lattice/lib/cloudpickle:ro",
            ],
            "Ulimits": [{"Name": "core", "Soft": 0, "Hard": 0}],
        }
        if spec.memory_limit_mb:
            host["Memory"] = spec.memory_limit_mb * _MB
            host["MemorySwap"] = spec.memory_limit_mb * _MB  # no swap beyond the limit
        if submission.requirements.cpu > 0:
            host["NanoCpus"] = int(submission.requirements.cpu * 1e9)
        if spec.max_processes:
            host["PidsLimit"] = spec.max_processes
        if spec.max_open_files:
            host["Ulimits"].append(
                {"Name": "nofile", "Soft": spec.max_open_files, "Hard": spec.max_open_files}
            )
        if spec.max_file_size_mb:
            size = spec.max_file_size_mb * _MB
            host["Ulimits"].append({"Name": "fsize", "Soft": size, "Hard": size})
        if spec.cpu_time_limit:
            seconds = max(1, math.ceil(spec.cpu_time_limit))
            host["Ulimits"].append({"Name": "cpu", "Soft": seconds, "Hard": seconds + 1})
        if submission.node.gpu_ids:
            ids = [str(i) for i in submission.node.gpu_ids]
            host["DeviceRequests"] = [
                {"Driver": "nvidia", "DeviceIDs": ids, "Capabilities": [["gpu"]]}
            ]
            env.append("CUDA_VISIBLE_DEVICES=" + ",".join(ids))
        return {
            "Image": image,
            "Cmd": ["python", "-X", "faulthandler", "-c", _BOOTSTRAP],
            "Env": env,
            "User": user,
            "WorkingDir": "/tmp",
            "NetworkDisabled": True,
            "Labels": {"lattice.task": submission.task_key},
            "HostConfig": host,
        }

    def _kill(self, cid: str) -> None:
        # A client of its own: cancel comes from another thread than the one waiting.
        try:
            with _client(self.socket_path, timeout=10.0) as client:
                client.post(f"/containers/{cid}/kill", params={"signal": "SIGKILL"})
        except httpx.HTTPError as exc:
            log.warning("could not kill sandbox container %s: %s", cid[:12], exc)

    @staticmethod
    def _judge(
        spec: SandboxSpec, status: int, oom: bool, output: str, raw: bytes | None, open_values: bool
    ) -> TaskOutcome:
        if oom:
            return TaskOutcome(
                error=TaskErrorInfo.framework(
                    verdict.MEMORY_LIMIT,
                    f"the task's container exceeded its memory limit of {spec.memory_limit_mb} MB "
                    "and was killed by the kernel's OOM killer",
                )
            )
        # docker-init reports a child killed by signal N as exit status 128 + N
        end = ChildEnd(
            exit_code=status if status < 128 else None,
            signal=status - 128 if status > 128 else None,
            output_tail=output,
        )
        if raw is None:
            return verdict.judge(spec, end, None)
        try:
            outcome = decode_outcome(raw, open_values=open_values)
        except ValueError as exc:
            return TaskOutcome(
                error=TaskErrorInfo.framework(
                    verdict.SANDBOX_ERROR, f"the task's outcome could not be read: {exc}"
                )
            )
        return verdict.judge(spec, end, outcome)

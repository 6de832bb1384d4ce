"""``lattice`` as users run it: real child processes, real signals, the README quickstart."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lattice import LatticeClient, TaskFailedError, task
from lattice.cli.cli import build_parser, main
from tests.integration.raw_api import RawApi, Ref
from tests.integration.server_fixture import (
    REPO_ROOT,
    SHUTDOWN_LINE,
    Gate,
    HeadProcess,
    free_port,
    start_local_head,
)

WAIT = 30.0
#: how long a head may take to stop after SIGINT/SIGTERM
STOP_WITHIN = 5.0


def pass_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(30)
        if conn.recv(2) != b"go":
            raise RuntimeError("the gate was closed")


@task(inputs=["x"], outputs=["y", "pid"], resources={"cpu": 0.5})
def cube_where(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] ** 3, "pid": os.getpid()}


@task(inputs=["y"], outputs=["arr"], resources={"cpu": 0.5})
def as_array(params: dict[str, int]) -> Any:
    return np.full(3, params["y"], dtype=np.int64)


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.5})
def refuse(params: dict[str, int]) -> int:
    raise PermissionError(f"not allowed: {params['x']}")


@task(inputs=["gate"], outputs=["y"], resources={"cpu": 0.1})
def gated(params: dict[str, int]) -> int:
    pass_gate(params["gate"])
    return 1


def plain_double(params: dict[str, int]) -> dict[str, int]:
    return {"y": 2 * params["x"], "pid": os.getpid()}


def plain_inc(params: dict[str, int]) -> dict[str, int]:
    return {"z": params["y"] + 1}


# --- help ---------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def check_describes_every_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    text = " ".join(help_text.split())  # argparse wraps lines
    for action in parser._actions:
        if not action.option_strings:
            continue
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in text, flag
        assert " ".join(action.help.split()[:3]) in text, action.help


def test_lattice_help_as_a_command() -> None:
    script = Path(sys.executable).with_name("lattice")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lattice.cli.cli"]

    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=WAIT, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "start" in done.stdout and "status" in done.stdout
    check_describes_every_flag(build_parser(), done.stdout)


@pytest.mark.parametrize("command", ["start", "status"])
def test_subcommand_help_describes_every_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])

    assert exit_.value.code == 0
    check_describes_every_flag(subcommands()[command], capsys.readouterr().out)


def test_unknown_flag_value_exits_2_saying_why(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["start", "--head", "--executor", "spark"])

    assert exit_.value.code == 2
    assert "invalid choice: 'spark'" in capsys.readouterr().err


def test_public_host_without_token_exits_non_zero_saying_why() -> None:
    port = free_port()
    head = HeadProcess(
        ["start", "--head", "--host", "0.0.0.0", "--executor", "local", "--port", str(port)]
    )
    head.launch()
    try:
        code = head.wait(WAIT)
    finally:
        head.stop(signal.SIGKILL)  # only if it is still running, i.e. the test failed

    assert code != 0
    assert "refusing to listen on 0.0.0.0 without a token" in head.output
    assert "--token" in head.output and "LATTICE_TOKEN" in head.output
    assert "Application startup complete" not in head.output
    assert "Traceback" not in head.output


# --- a local head -------------------------------------------------------------------------


def test_head_binds_loopback_by_default(local_head: HeadProcess) -> None:
    assert f"Uvicorn running on http://127.0.0.1:{local_head.port}" in local_head.output


def test_readme_quickstart_runs_against_the_head(local_head: HeadProcess) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "quickstart.py"), local_head.url],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_client_workflow_runs_in_the_head_process(local_head: HeadProcess) -> None:
    assert local_head.proc is not None
    with LatticeClient(local_head.url, timeout=WAIT) as client:
        wf = client.create_workflow()
        a = wf.add_task(cube_where, inputs={"x": 3})
        b = wf.add_task(as_array, inputs={"y": a.outputs["y"]})
        outputs = wf.get_outputs(wf.run(), timeout=WAIT)

    assert outputs[a] == {"y": 27, "pid": local_head.proc.pid}
    np.testing.assert_array_equal(outputs[b]["arr"], [27, 27, 27])


def test_raw_http_code_runs_in_the_head_process(local_head: HeadProcess) -> None:
    assert local_head.proc is not None
    api = RawApi(local_head.url)
    wf = api.workflow()
    a = api.code_task(wf, plain_double, {"x": 4}, ("y", "pid"))
    b = api.code_task(wf, plain_inc, {"y": Ref(a, "y")}, ("z",))

    messages = api.messages(wf, api.run(wf))
    api.close()

    results = {
        m["data"]["task_id"]: m["data"]["result"] for m in messages if m["type"] == "finish_task"
    }
    assert results == {a: {"y": 8, "pid": local_head.proc.pid}, b: {"z": 9}}


def test_status_command_lists_the_nodes(
    local_head: HeadProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--addr", f"127.0.0.1:{local_head.port}"]) == 0

    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:3] == ["NODE", "ADDRESS", "STATE"]
    assert len(rows) == 1 and rows[0].split()[:3] == ["local", "127.0.0.1", "alive"]


def test_status_command_against_nothing_names_the_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()

    assert main(["status", "--addr", f"127.0.0.1:{port}"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("lattice: cannot reach") and f"127.0.0.1:{port}" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_the_head_down_cleanly(sig: signal.Signals, gate: Gate) -> None:
    head = start_local_head()
    try:
        with LatticeClient(head.url, timeout=WAIT) as client:
            done = client.create_workflow()
            done.add_task(cube_where, inputs={"x": 2})
            assert done.get_outputs(done.run(), timeout=WAIT)
            held = client.create_workflow()
            held.add_task(gated, inputs={"gate": gate.port})
            run_id = held.run()
        api = RawApi(head.url)
        with connect(api.ws_url(held.workflow_id, run_id), open_timeout=WAIT) as ws:
            assert json.loads(ws.recv(timeout=WAIT))["type"] == "start_task"
            assert head.proc is not None
            started = time.monotonic()
            head.proc.send_signal(sig)
            # The subscriber of the open run is told the server is going away.
            closed = read_rest(ws)
        assert closed in (1001, 1012), closed
        # A running local task is a thread, which nothing can interrupt: let it end.
        gate.close()
        code = head.wait(STOP_WITHIN)
        elapsed = time.monotonic() - started
        api.close()
    finally:
        head.stop(signal.SIGKILL)

    assert code == 0, head.output
    assert elapsed < STOP_WITHIN
    assert SHUTDOWN_LINE in head.output
    assert "Traceback" not in head.output and "ERROR" not in head.output, head.output


def read_rest(ws: Any) -> int | None:
    """Drain a WebSocket until it closes; return the close code."""
    try:
        while True:
            ws.recv(timeout=WAIT)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


# --- a Ray head ---------------------------------------------------------------------------


@pytest.mark.ray
def test_workflow_runs_on_a_ray_head_from_another_process(ray_head: HeadProcess) -> None:
    assert ray_head.proc is not None
    ray_port = int(ray_head.args[ray_head.args.index("--ray-port") + 1])
    with LatticeClient(ray_head.url, timeout=WAIT) as client:
        assert client.health()["executor"] == "ray"
        assert client.get_ray_head_port() == ray_port
        (node,) = client.nodes()
        assert node["total"]["cpu"] == 2

        wf = client.create_workflow()
        a = wf.add_task(cube_where, inputs={"x": 4})
        b = wf.add_task(as_array, inputs={"y": a.outputs["y"]})
        c = wf.add_task(cube_where, inputs={"x": 5})
        run_id = wf.run()
        messages = wf.get_results(run_id, verbose=False, timeout=60)
        outputs = wf.get_outputs(run_id, timeout=60)

        failing = client.create_workflow()
        failing.add_task(refuse, inputs={"x": 1})
        with pytest.raises(TaskFailedError) as failure:
            failing.get_outputs(failing.run(), timeout=60)

    assert outputs[a]["y"] == 64 and outputs[c]["y"] == 125
    np.testing.assert_array_equal(outputs[b]["arr"], [64, 64, 64])
    # Tasks ran in Ray workers: neither this process nor the head's.
    assert outputs[a]["pid"] not in (os.getpid(), ray_head.proc.pid)
    starts = [m["data"] for m in messages if m["type"] == "start_task"]
    assert len(starts) == 3
    assert all(re.fullmatch(r"[0-9a-f]{56}", s["node_id"]) for s in starts), starts
    assert messages[-1]["data"]["success"] is True
    assert failure.value.error.type == "PermissionError"
    assert "not allowed: 1" in str(failure.value) and "in refuse" in failure.value.error.traceback

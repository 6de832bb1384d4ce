"""The dashboard in a real headless Chromium (the system's, /usr/bin/chromium; scripts/check
installs it) against a real in-process head with a token: pages, live updates over the run's
WebSocket, the task panel, offline loading, and a 1,000-task run.

With ``LATTICE_SCREENSHOTS=DIR`` set, each page is also saved as a PNG in DIR (that is how
docs/screenshots/ is made).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from lattice import LatticeClient, task
from lattice.config.settings import ServerSettings
from tests.integration.server_fixture import Gate, InProcessServer

CHROMIUM = os.environ.get("LATTICE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "dashboard-token-7c1e-42aa90"
WAIT = 30.0
WAIT_MS = 30_000
GREEN = "rgb(46, 157, 79)"

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (scripts/check installs it)"
)


def pass_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.settimeout(30)
        if conn.recv(2) != b"go":
            raise RuntimeError("the gate was closed")


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def square(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] * params["x"]}


@task(inputs=["gate"], outputs=["y"], resources={"cpu": 0.1})
def gated(params: dict[str, int]) -> dict[str, int]:
    pass_gate(params["gate"])
    return {"y": 1}


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def explode(params: dict[str, int]) -> dict[str, int]:
    raise ZeroDivisionError(f"divided {params['x']} by nothing")


@pytest.fixture(scope="module")
def head() -> Iterator[InProcessServer]:
    settings = ServerSettings(executor="local", token=TOKEN, num_cpus=2)
    with InProcessServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(head: InProcessServer) -> Iterator[LatticeClient]:
    with LatticeClient(head.url, token=TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, head: InProcessServer) -> Iterator[Any]:
    """A page that has entered the dashboard with the token once (now it has the cookie)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    p.goto(f"{head.url}/?token={TOKEN}")
    assert p.url == f"{head.url}/", "the token should leave the URL after the entry"
    yield p
    context.close()


def shot(page: Any, name: str) -> None:
    target = os.environ.get("LATTICE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def test_the_dashboard_needs_the_token(head: InProcessServer) -> None:
    assert httpx.get(f"{head.url}/").status_code == 401
    assert httpx.get(f"{head.url}/?token=wrong-token-0000000").status_code == 401
    entry = httpx.get(f"{head.url}/?token={TOKEN}")
    assert entry.status_code == 303
    assert entry.cookies.get("lattice_token") == TOKEN
    assert "httponly" in entry.headers["set-cookie"].lower()
    # The cookie opens the API too (what the pages call); the query token only opens "/".
    runs = httpx.get(f"{head.url}/runs", cookies={"lattice_token": TOKEN})
    assert runs.status_code == 200
    assert httpx.get(f"{head.url}/runs?token={TOKEN}").status_code == 401


def test_runs_page_lists_a_run_started_from_the_sdk(page: Any, client: LatticeClient) -> None:
    wf = client.create_workflow()
    first = wf.add_task(square, inputs={"x": 3})
    wf.add_task(square, inputs={"x": first.outputs["y"]})
    run_id = wf.run()
    wf.get_outputs(run_id, timeout=WAIT)

    page.goto(page.url + "#/runs")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "completed"
    assert "2/2" in row.inner_text()
    # The filter by state keeps it under "completed" and drops it under "failed".
    page.select_option("#filter-status", "failed")
    row.wait_for(state="detached")
    page.select_option("#filter-status", "completed")
    row.wait_for()
    shot(page, "runs")


def test_run_page_turns_a_running_task_green_when_it_finishes(
    page: Any, client: LatticeClient
) -> None:
    gate = Gate()
    try:
        wf = client.create_workflow()
        held = wf.add_task(gated, inputs={"gate": gate.port})
        after = wf.add_task(square, inputs={"x": held.outputs["y"]})
        run_id = wf.run()
        page.goto(f"{page.url.split('#')[0]}#/run/{run_id}")
        node = page.locator(f'g.node[data-task-id="{held.task_id}"]')
        page.wait_for_selector(f'g.node[data-task-id="{held.task_id}"][data-state="running"]')
        # Laid out by the library: the dependent task sits to the right of its input.
        assert (
            node.bounding_box()["x"]
            < page.locator(f'g.node[data-task-id="{after.task_id}"]').bounding_box()["x"]
        )
        shot(page, "run-running")

        gate.open()
        page.wait_for_selector(f'g.node[data-task-id="{held.task_id}"][data-state="completed"]')
        page.wait_for_selector(f'g.node[data-task-id="{after.task_id}"][data-state="completed"]')
        fill = node.locator("rect").evaluate("r => getComputedStyle(r).fill")
        assert fill == GREEN
        # The timeline has a bar per attempt.
        page.wait_for_selector(f'.bar[data-task-id="{held.task_id}"]')
        shot(page, "run")
    finally:
        gate.close()


def test_a_failed_tasks_panel_shows_its_traceback(page: Any, client: LatticeClient) -> None:
    wf = client.create_workflow()
    bad = wf.add_task(explode, inputs={"x": 7})
    run_id = wf.run()
    wf.get_results(run_id, timeout=WAIT)

    page.goto(f"{page.url.split('#')[0]}#/run/{run_id}")
    page.locator(f'g.node[data-task-id="{bad.task_id}"][data-state="failed"]').click()
    traceback = page.locator("#task-panel pre.traceback")
    traceback.wait_for()
    text = traceback.inner_text()
    assert "ZeroDivisionError" in text and "divided 7 by nothing" in text
    assert "explode" in text  # the frame of the task's own code
    # Logs degrade to a sentence while the head has no log route.
    page.wait_for_function("document.querySelector('#task-logs').textContent !== 'loading…'")
    shot(page, "task-panel")


def test_nodes_page_shows_the_heads_cpus(page: Any, head: InProcessServer) -> None:
    nodes = httpx.get(f"{head.url}/nodes", headers={"x-lattice-token": TOKEN}).json()["nodes"]
    page.goto(f"{page.url.split('#')[0]}#/nodes")
    cell = page.locator(f'tr[data-node-id="{nodes[0]["node_id"]}"] td.cpus')
    cell.wait_for()
    assert f"of {nodes[0]['total']['cpu']}" in cell.inner_text()
    shot(page, "nodes")


def test_queue_page_lists_a_waiting_task_and_cancels_it(page: Any, client: LatticeClient) -> None:
    gate = Gate()
    try:
        wf = client.create_workflow()
        held = wf.add_task(gated, inputs={"gate": gate.port})
        waiting = wf.add_task(square, inputs={"x": held.outputs["y"]})
        run_id = wf.run()
        page.goto(f"{page.url.split('#')[0]}#/queue")
        row = page.locator(f'#queue-table tr[data-task-id="{waiting.task_id}"]')
        row.wait_for()
        assert "waiting for inputs" in row.inner_text()
        shot(page, "queue")
        row.locator("button.cancel-task").click()
        row.wait_for(state="detached")
        gate.open()
        messages = wf.get_results(run_id, timeout=WAIT)
        cancelled = [m for m in messages if m["type"] == "task_cancelled"]
        assert [m["data"]["task_id"] for m in cancelled] == [waiting.task_id]
    finally:
        gate.close()


def test_approvals_page_says_when_the_head_has_no_barriers(
    page: Any, client: LatticeClient
) -> None:
    gate = Gate()
    try:
        wf = client.create_workflow()
        wf.add_task(gated, inputs={"gate": gate.port})
        run_id = wf.run()
        page.goto(f"{page.url.split('#')[0]}#/approvals")
        page.locator("#approvals").get_by_text("not available on this head").or_(
            page.locator("#approvals .barrier")
        ).first.wait_for()
        shot(page, "approvals")
        gate.open()
        wf.get_results(run_id, timeout=WAIT)
    finally:
        gate.close()


def test_dashboard_and_docs_load_with_the_outside_network_cut(
    page: Any, head: InProcessServer
) -> None:
    attempted: list[str] = []

    def only_loopback(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort("internetdisconnected")

    page.context.route("**/*", only_loopback)
    page.goto(f"{head.url}/#/runs")
    page.locator("#runs-table").wait_for()
    page.goto(f"{head.url}/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "Lattice API" in page.locator(".swagger-ui .info .title").inner_text()
    page.locator(".opblock-summary-path", has_text="/runs/{run_id}").first.wait_for()
    shot(page, "docs")
    assert attempted == []


def test_a_thousand_task_run_loads_and_stays_responsive(page: Any, client: LatticeClient) -> None:
    """Measures, does not assert timings: load time of the run's page and the longest stall of
    the page's main thread while the run's events stream in (printed; docs/benchmarks.md)."""
    gate = Gate()
    try:
        wf = client.create_workflow()
        root = wf.add_task(gated, inputs={"gate": gate.port})
        leaves = [wf.add_task(square, inputs={"x": root.outputs["y"]}) for _ in range(999)]
        run_id = wf.run()
        base = page.url.split("#")[0]
        started = time.perf_counter()
        page.goto(f"{base}#/run/{run_id}")
        page.wait_for_function("document.querySelectorAll('#dag g.node').length === 1000")
        load_s = time.perf_counter() - started
        page.wait_for_selector(f'g.node[data-task-id="{root.task_id}"][data-state="running"]')
        # A probe on the page's main thread: the longest gap between 20 ms timer ticks.
        page.evaluate(
            """() => { window.__gap = 0; let last = performance.now();
            window.__probe = setInterval(() => { const now = performance.now();
            window.__gap = Math.max(window.__gap, now - last - 20); last = now; }, 20); }"""
        )
        streamed = time.perf_counter()
        gate.open()
        last = leaves[-1].task_id
        page.wait_for_selector(
            f'g.node[data-task-id="{last}"][data-state="completed"]', timeout=120_000
        )
        page.wait_for_function(
            "document.querySelectorAll('#dag g.node[data-state=\"completed\"]').length === 1000",
            timeout=120_000,
        )
        stream_s = time.perf_counter() - streamed
        gap_ms = page.evaluate("() => { clearInterval(window.__probe); return window.__gap; }")
        # Responsive: a click opens the panel while the page holds 1,000 tasks.
        clicked = time.perf_counter()
        page.locator(f'g.node[data-task-id="{last}"]').click()
        page.locator("#task-panel pre.outputs").wait_for()
        click_s = time.perf_counter() - clicked
        print(
            f"\n1000-task run page: load {load_s:.2f} s, events streamed over {stream_s:.2f} s,"
            f" longest main-thread stall {gap_ms:.0f} ms, click to panel {click_s * 1000:.0f} ms"
        )
        outputs = wf.get_outputs(run_id, timeout=WAIT)
        assert len(outputs) == 1000
    finally:
        gate.close()

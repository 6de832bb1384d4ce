"""Metrics end to end: run workflows through a real server, scrape /metrics, compare counts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lattice import LatticeClient, TaskFailedError, task
from lattice.config.settings import ServerSettings
from tests.integration.server_fixture import InProcessServer


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def ok_task(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] + 1}


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def bad_task(params: dict[str, int]) -> dict[str, int]:
    raise RuntimeError("bad on purpose")


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1}, batch_size=4, batch_timeout=30)
def batched(params: list[dict[str, int]]) -> list[dict[str, int]]:
    return [{"y": p["x"] * 10} for p in params]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def ran() -> Iterator[tuple[InProcessServer, Samples]]:
    """A fresh server (counts start at zero) that ran one workflow of each kind."""
    settings = ServerSettings(executor="local", metrics_enabled=True)
    with InProcessServer(settings) as server, LatticeClient(server.url) as client:
        good = client.create_workflow()
        first = good.add_task(ok_task, inputs={"x": 1})
        second = good.add_task(ok_task, inputs={"x": first.outputs["y"]})
        good.add_task(ok_task, inputs={"x": second.outputs["y"]})
        assert len(good.get_outputs(good.run(), timeout=60)) == 3

        failing = client.create_workflow()
        broken = failing.add_task(bad_task, inputs={"x": 1})
        failing.add_task(ok_task, inputs={"x": broken.outputs["y"]}, task_name="after_bad")
        with pytest.raises(TaskFailedError):
            failing.get_outputs(failing.run(), timeout=60)

        batch = client.create_workflow()
        for i in range(4):
            batch.add_task(batched, inputs={"x": i})
        outputs = batch.get_outputs(batch.run(), timeout=60)
        assert sorted(o["y"] for o in outputs.values()) == [0, 10, 20, 30]
        yield server, scrape(server.url)


def test_run_and_workflow_counters(ran: tuple[InProcessServer, Samples]) -> None:
    _, samples = ran
    assert value(samples, "lattice_workflows_created_total") == 3
    assert value(samples, "lattice_runs_started_total") == 3
    assert value(samples, "lattice_runs_finished_total", outcome="completed") == 2
    assert value(samples, "lattice_runs_finished_total", outcome="failed") == 1


def test_task_counters_match_what_ran(ran: tuple[InProcessServer, Samples]) -> None:
    _, samples = ran
    assert value(samples, "lattice_tasks_submitted_total", task_name="ok_task") == 3
    assert value(samples, "lattice_tasks_completed_total", task_name="ok_task", node="local") == 3
    assert value(samples, "lattice_tasks_failed_total", task_name="bad_task") == 1
    # The dependant of the failed task was skipped: never submitted, never counted.
    assert value(samples, "lattice_tasks_submitted_total", task_name="after_bad") == 0
    # A batch of four is one call but four tasks.
    assert value(samples, "lattice_tasks_submitted_total", task_name="batched") == 4
    assert value(samples, "lattice_tasks_completed_total", task_name="batched") == 4
    assert value(samples, "lattice_tasks_cancelled_total") == 0


def test_histograms_count_every_task(ran: tuple[InProcessServer, Samples]) -> None:
    _, samples = ran
    assert value(samples, "lattice_task_duration_seconds_count", task_name="ok_task") == 3
    assert value(samples, "lattice_task_duration_seconds_count", task_name="bad_task") == 1
    assert value(samples, "lattice_task_duration_seconds_count", task_name="batched") == 4
    assert value(samples, "lattice_task_queue_seconds_count") == 3 + 1 + 4


def test_gauges_settle_when_idle(ran: tuple[InProcessServer, Samples]) -> None:
    server, samples = ran
    assert value(samples, "lattice_pending_tasks") == 0
    total_cpu = httpx.get(f"{server.url}/nodes", timeout=10).json()["nodes"][0]["total"]["cpu"]
    assert value(samples, "lattice_node_cpu_available", node="local") == total_cpu


def test_http_requests_by_route_template(ran: tuple[InProcessServer, Samples]) -> None:
    _, samples = ran
    assert (
        value(
            samples,
            "lattice_http_requests_total",
            route="/run_workflow",
            method="POST",
            status="200",
        )
        == 3
    )
    assert (
        value(samples, "lattice_http_requests_total", route="/create_workflow", status="200") == 3
    )

"""The heads the security suite attacks, and what "changes nothing" means for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.integration.raw_api import RawApi

#: counters of /metrics that a request which ran anything would move
COUNTERS = ("lattice_workflows_created_total", "lattice_runs_started_total")
#: seconds a request body may take on the suite's heads (small, so the timeout test is quick)
BODY_TIMEOUT = 1.0
#: seconds a connection may stay without a request's headers on the suite's heads
IDLE_TIMEOUT = 1.0
#: code one workflow may hold on the suite's heads
MAX_WORKFLOW_CODE_BYTES = 200_000


@dataclass
class Head:
    """A serving head: ``executor`` is "local" or "ray"; ``url`` its API."""

    executor: str
    url: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def api(self, headers: dict[str, str] | None = None) -> RawApi:
        return RawApi(self.url, headers)


def counters(http: httpx.Client) -> dict[str, float]:
    """The COUNTERS as /metrics shows them now (summed over their labels)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in http.get("/metrics").text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def state(api: RawApi, workflow_id: str) -> dict[str, Any]:
    """What an attack could change: the nodes (id, state, totals), the tasks of
    ``workflow_id``, and how many workflows and runs the head has ever started."""
    nodes = sorted(
        (n["node_id"], n["node_ip"], n["state"], repr(n["total"]))
        for n in api.ok("GET", "/nodes")["nodes"]
    )
    return {"nodes": nodes, "tasks": api.tasks(workflow_id), "counters": counters(api.http)}

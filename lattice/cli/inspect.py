"""``lattice runs | run show | logs | cancel | approve | reject | queue``: read and steer a
running head over its HTTP API. A route the head lacks (an older head, or a feature not in it)
is one line saying so, exit code 3; bad input is the head's own message, exit code 2."""

from __future__ import annotations

import json
from typing import Any

import httpx

from lattice.exceptions import LatticeUsageError

NOT_AVAILABLE = 3


class Head:
    def __init__(self, addr: str, token: str | None) -> None:
        url = addr if addr.startswith(("http://", "https://")) else f"http://{addr}"
        headers = {"x-lattice-token": token} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The JSON answer; None when the head has no such route (404 without a detail
        naming a run or task); raises LatticeUsageError with the head's message otherwise."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LatticeUsageError(
                f"cannot reach the head at {self.http.base_url}: {exc}"
            ) from None
        body: dict[str, Any] = response.json() if response.content else {}
        if response.status_code == 404 and body.get("detail") in (None, "Not Found"):
            return None
        if response.status_code >= 400:
            raise LatticeUsageError(f"{response.status_code}: {body.get('detail', body)}")
        return body


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def cmd_runs(head: Head, workflow: str | None, status: str | None) -> int:
    params = {k: v for k, v in {"workflow_id": workflow, "status": status}.items() if v}
    body = head.call("GET", "/runs", params=params)
    if body is None:
        print("this head does not list runs (no GET /runs)")
        return NOT_AVAILABLE
    print(f"{'RUN':<38} {'WORKFLOW':<38} {'STATE':<10} {'DURATION':>9} {'DONE':>9} FAILED")
    for r in body["runs"]:
        done = f"{r['counts'].get('completed', 0)}/{r['task_count']}"
        print(
            f"{r['run_id']:<38} {r['workflow_id']:<38} {r['status']:<10} "
            f"{_seconds(r['duration']):>9} {done:>9} {r['counts'].get('failed', 0)}"
        )
    return 0


def cmd_run_show(head: Head, run_id: str) -> int:
    body = head.call("GET", f"/runs/{run_id}")
    if body is None:
        print(f"no run {run_id}")
        return NOT_AVAILABLE
    run = body["run"]
    print(f"run {run['run_id']} ({run['status']}, {_seconds(run.get('duration'))})")
    tasks: dict[str, dict[str, Any]] = run["tasks"]
    children: dict[str, list[str]] = {}
    has_parent: set[str] = set()
    for a, b in run.get("edges", []):
        children.setdefault(a, []).append(b)
        has_parent.add(b)
    shown: set[str] = set()

    def show(task_id: str, depth: int) -> None:
        t = tasks[task_id]
        again = " (see above)" if task_id in shown else ""
        print(
            f"{'  ' * depth}- {t.get('task_name') or task_id} [{t['status']}] "
            f"{_seconds(t.get('duration'))} {task_id}{again}"
        )
        if t.get("error") and not again:
            print(f"{'  ' * depth}    {t['error']['type']}: {t['error']['message']}")
        if again:
            return
        shown.add(task_id)
        for child in children.get(task_id, []):
            show(child, depth + 1)

    for task_id in tasks:
        if task_id not in has_parent:
            show(task_id, 0)
    return 0


def cmd_logs(head: Head, run_id: str, task_id: str | None, follow: bool) -> int:
    path = f"/runs/{run_id}/tasks/{task_id}/logs" if task_id else f"/runs/{run_id}/logs"
    body = head.call("GET", path)
    if body is None:
        print("this head does not keep task logs (no GET /runs/{run_id}/tasks/{task_id}/logs)")
        return NOT_AVAILABLE
    for line in body.get("lines", body.get("logs", [])):
        print(line if isinstance(line, str) else line.get("line", json.dumps(line)))
    if follow:
        print("(--follow: streaming task_log messages needs the head's log events)")
    return 0


def cmd_cancel(head: Head, run_id: str, task_id: str | None) -> int:
    path = f"/runs/{run_id}/tasks/{task_id}/cancel" if task_id else f"/runs/{run_id}/cancel"
    if head.call("POST", path) is None:
        print(f"no run {run_id}")
        return NOT_AVAILABLE
    print(f"cancelled {'task ' + task_id if task_id else 'run ' + run_id}")
    return 0


def cmd_decide(head: Head, run_id: str, barrier: str, decision: str, comment: str) -> int:
    body = {"decision": decision, "comment": comment, "by": "cli"}
    if head.call("POST", f"/runs/{run_id}/barriers/{barrier}", json=body) is None:
        print("this head has no approval barriers (no POST /runs/{run_id}/barriers/{id})")
        return NOT_AVAILABLE
    print(f"{decision}d barrier {barrier} of run {run_id}")
    return 0


def cmd_queue(head: Head) -> int:
    status, details = head.call("GET", "/queue/status"), head.call("GET", "/queue/details")
    if status is None or details is None:
        print("this head has no queue view")
        return NOT_AVAILABLE
    print(
        f"{status['total']} tasks: " + ", ".join(f"{k} {n}" for k, n in status["by_state"].items())
    )
    for t in details["tasks"]:
        print(
            f"{t['task_id']}  {t['task_name']:<20} {t['priority_name']:<8} {t['state']:<22} "
            f"waited {t['waited']:.1f}s  {t['reason'] or ''}"
        )
    return 0

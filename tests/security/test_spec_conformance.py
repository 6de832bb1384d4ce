"""Clients written by others against spec/002, at the same request-handling boundary: tasks
sent as source alone, both ``from_task`` reference forms, on a local and a Ray head."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.raw_api import RawApi, Ref, task_input, task_output
from tests.security.heads import Head, state

DOUBLE = "def double(params):\n    return {'y': params['x'] * 2}\n"
TWO = "def helper(v):\n    return v + 1\n\ndef add_one(params):\n    return {'z': helper(params['y'])}\n"
#: what a task compiled in the head would leave behind; it must not exist afterwards
MARK = "/tmp/lattice-source-compiled-in-head"


@pytest.fixture
def api(head: Head) -> Iterator[RawApi]:
    client = head.api()
    try:
        yield client
    finally:
        client.close()


def save_source(
    api: RawApi, wf: str, name: str, source: str, inputs: dict[str, Any], outputs: tuple[str, ...]
) -> Any:
    task_id = api.add_task(wf, name)
    body = {
        "workflow_id": wf,
        "task_id": task_id,
        "code_str": source,
        "task_input": task_input(inputs),
        "task_output": task_output(outputs),
    }
    return task_id, api.http.post("/save_task_and_add_edge", json=body)


def results(api: RawApi, wf: str) -> dict[str, Any]:
    messages = api.messages(wf, api.run(wf))
    assert messages[-1]["data"]["success"] is True, messages
    return {
        m["data"]["task_id"]: m["data"]["result"] for m in messages if m["type"] == "finish_task"
    }


def test_a_task_sent_as_source_alone_runs(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    first, saved = save_source(api, wf, "double", DOUBLE, {"x": 4}, ("y",))
    # found as the function named after the task, beside a helper
    second, also = save_source(api, wf, "add_one", TWO, {"y": Ref(first, "y")}, ("z",))

    assert saved.status_code == 200 and also.status_code == 200, (saved.text, also.text)
    out = results(api, wf)
    assert out[first] == {"y": 8} and out[second] == {"z": 9}


def test_source_is_compiled_where_the_task_runs_not_in_the_head(head: Head, api: RawApi) -> None:
    wf = api.workflow()
    source = f"open({MARK!r}, 'w').close()\n\ndef mark(params):\n    return {{'done': 1}}\n"
    if os.path.exists(MARK):
        os.remove(MARK)

    _, saved = save_source(api, wf, "mark", source, {}, ("done",))

    assert saved.status_code == 200, saved.text
    assert not os.path.exists(MARK)  # saving parsed it only
    results(api, wf)
    assert os.path.exists(MARK)  # running the task ran its top level, in the task's process
    os.remove(MARK)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("x = 1\n", "code_str defines no function"),
        ("def a(p):\n    return p\n\ndef b(p):\n    return p\n", "several functions (a, b)"),
        ("def broken(:\n", "code_str is not valid Python source"),
    ],
)
def test_a_source_without_one_function_to_run_is_a_400(
    head: Head, api: RawApi, source: str, says: str
) -> None:
    wf = api.workflow()
    task_id = api.add_task(wf, "task")
    before = state(api, wf)

    answer = api.http.post(
        "/save_task", json={"workflow_id": wf, "task_id": task_id, "code_str": source}
    )

    assert answer.status_code == 400, answer.text
    assert says in answer.json()["detail"]
    assert state(api, wf) == before


def reference_input(key: str, value: str) -> dict[str, Any]:
    return {
        "input_params": {
            "1": {"key": key, "input_schema": "from_task", "data_type": "any", "value": value}
        }
    }


@pytest.mark.parametrize("form", ["{id}.y", "{id}.output.y"])
def test_both_from_task_forms_are_accepted(head: Head, api: RawApi, form: str) -> None:
    wf = api.workflow()
    first, _ = save_source(api, wf, "double", DOUBLE, {"x": 5}, ("y",))
    second = api.add_task(wf, "add_one")
    body = {
        "workflow_id": wf,
        "task_id": second,
        "code_str": TWO,
        "task_input": reference_input("y", form.format(id=first)),
        "task_output": task_output(("z",)),
    }

    saved = api.http.post("/save_task_and_add_edge", json=body)

    assert saved.status_code == 200, saved.text
    assert results(api, wf)[second] == {"z": 11}


def test_an_output_literally_named_output_dot_key_keeps_the_spec_form(
    head: Head, api: RawApi
) -> None:
    wf = api.workflow()
    literal = "def lit(params):\n    return {'output.y': 7, 'y': 1}\n"
    first, _ = save_source(api, wf, "lit", literal, {}, ("output.y", "y"))
    second = api.add_task(wf, "add_one")
    body = {
        "workflow_id": wf,
        "task_id": second,
        "code_str": TWO,
        "task_input": reference_input("y", f"{first}.output.y"),
        "task_output": task_output(("z",)),
    }

    assert api.http.post("/save_task_and_add_edge", json=body).status_code == 200
    assert results(api, wf)[second] == {"z": 8}  # output "output.y" (7), not "y" (1)

"""What a store keeps of workflows and runs, as plain JSON-able records.

A workflow's definition is kept as it was sent (each code task's saved configuration, each
LangGraph task's code, the edges), so that rebuilding it goes through the same validation as
the routes that built it. Code travels apart from the definition, as blobs named by their
digest: a hundred runs of one workflow keep its code once.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lattice.core.run.events import RunEvent
from lattice.core.workflow.base import CodeTask, CodeTaskConfig, LangGraphTask, Workflow
from lattice.exceptions import LatticeError
from lattice.vocabulary import SandboxSpec, code_digest


class StoredDefinitionError(LatticeError):
    """A stored definition cannot be rebuilt (its code is missing, or it no longer validates)."""


@dataclass(frozen=True)
class DefinitionRecord:
    """A workflow's definition: ``body`` is JSON-able, ``code`` maps digest -> code bytes."""

    workflow_id: str
    body: dict[str, Any]
    code: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRun:
    """A run as a store read it back: its definition when it was accepted, and its events in
    order (their sequence numbers are their positions)."""

    run_id: str
    workflow_id: str
    definition: DefinitionRecord
    events: tuple[RunEvent, ...]

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].kind == "finish_workflow"


def _config_record(config: CodeTaskConfig) -> dict[str, Any]:
    record = asdict(replace(config, serialized_code=None, sandbox=None))
    record.pop("serialized_code")
    if config.sandbox is not None:
        record["sandbox"] = {**asdict(config.sandbox), "level": config.sandbox.level.value}
    return record


def definition_record(workflow: Workflow) -> DefinitionRecord:
    """The record of ``workflow`` as it stands."""
    tasks: list[dict[str, Any]] = []
    code: dict[str, bytes] = {}
    for task in workflow.tasks():
        entry: dict[str, Any] = {"task_id": task.task_id, "task_name": task.task_name}
        if isinstance(task, CodeTask):
            entry["type"] = "code"
            if task.config is not None and task.code is not None:
                entry["config"] = _config_record(task.config)
                entry["code"] = task.code_id
                code[task.code_id] = task.code
        elif isinstance(task, LangGraphTask):
            entry.update(type="langgraph", code=task.code_id, resources=task.resources)
            code[task.code_id] = task.code
        tasks.append(entry)
    edges = [list(edge) for edge in workflow.get_graph_edges()]
    return DefinitionRecord(workflow.workflow_id, {"tasks": tasks, "edges": edges}, code)


def _code_text(record: DefinitionRecord, digest: str, task_id: str) -> str:
    code = record.code.get(digest)
    if code is None or code_digest(code) != digest:
        raise StoredDefinitionError(
            f"task {task_id} of workflow {record.workflow_id}: its code ({digest}) is missing "
            "from the store or damaged"
        )
    return base64.b64encode(code).decode("ascii")


def rebuild_workflow(record: DefinitionRecord) -> Workflow:
    """The workflow ``record`` describes. Raises StoredDefinitionError, naming the task, if a
    task's code is missing or the definition no longer validates."""
    workflow = Workflow(record.workflow_id)
    wid = record.workflow_id
    try:
        saved: list[tuple[str, CodeTaskConfig]] = []
        for entry in record.body["tasks"]:
            task_id, name = str(entry["task_id"]), str(entry["task_name"])
            if entry["type"] == "langgraph":
                text = _code_text(record, entry["code"], task_id)
                task = LangGraphTask.create(wid, task_id, name, text, entry.get("resources"))
                workflow.add_task(task_id, task)
                continue
            workflow.add_task(task_id, CodeTask(wid, task_id, name))
            if "config" in entry:
                config = dict(entry["config"])
                sandbox = config.pop("sandbox", None)
                saved.append(
                    (
                        task_id,
                        CodeTaskConfig(
                            serialized_code=_code_text(record, entry["code"], task_id),
                            sandbox=SandboxSpec(**sandbox) if sandbox else None,
                            **config,
                        ),
                    )
                )
        for source, target in record.body["edges"]:
            workflow.add_edge(str(source), str(target))
        for task_id, task_config in saved:
            workflow.save_task(task_id, task_config, add_edges=False)
    except StoredDefinitionError:
        raise
    except (LatticeError, KeyError, TypeError, ValueError) as exc:
        raise StoredDefinitionError(
            f"the stored definition of workflow {wid} cannot be rebuilt: {type(exc).__name__}: "
            f"{exc}"
        ) from exc
    return workflow

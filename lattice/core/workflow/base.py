"""Workflows and their tasks: a DAG on networkx (spec/000 §5).

A ``Workflow`` is a definition; every run works on its own copy (:meth:`Workflow.copy_for_run`),
so concurrent runs of one workflow never see each other's completions.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import networkx as nx

from lattice.core.workflow.inputs import (
    InputParam,
    InputSchema,
    TaskRef,
    parse_task_input,
    parse_task_output,
)
from lattice.exceptions import (
    CycleError,
    InvalidReferenceError,
    LatticeInputError,
    TaskNotFoundError,
    TooLargeError,
)
from lattice.executor.source import find_function, source_payload
from lattice.serialization import decode_code
from lattice.vocabulary import (
    DEFAULT_PRIORITY,
    BatchConfig,
    SandboxSpec,
    TaskResourceRequirements,
    code_digest,
    parse_priority,
)


class TaskType(str, Enum):
    CODE = "code"
    LANGGRAPH = "langgraph"

    @classmethod
    def parse(cls, value: str) -> TaskType:
        try:
            return cls(value)
        except ValueError:
            raise LatticeInputError(
                f"Invalid task type {value!r}; allowed: {', '.join(t.value for t in cls)}"
            ) from None


@dataclass
class BaseTask(ABC):
    workflow_id: str
    task_id: str
    task_name: str

    @property
    @abstractmethod
    def task_type(self) -> TaskType: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CodeTaskConfig:
    """What a code task is saved with (``/save_task``, one task of ``/add_tasks``), as sent."""

    serialized_code: str | None
    task_input: dict[str, Any] | None = None
    task_output: dict[str, Any] | None = None
    code_str: str | None = None
    resources: dict[str, Any] | None = None
    batch_config: dict[str, Any] | None = None
    priority: int | str | None = None
    sandbox: SandboxSpec | None = None


@dataclass
class CodeTask(BaseTask):
    #: as saved (None until it is); the fields below are its parsed forms, what the engine reads
    config: CodeTaskConfig | None = None
    requirements: TaskResourceRequirements = field(default_factory=TaskResourceRequirements)
    inputs: tuple[InputParam, ...] = ()
    outputs: tuple[str, ...] = ()
    code: bytes | None = None
    code_id: str = ""
    batch: BatchConfig | None = None
    #: its own level, or None to take its run's (NORMAL unless the run says otherwise)
    priority: int | None = None
    sandbox: SandboxSpec | None = None

    @property
    def task_type(self) -> TaskType:
        return TaskType.CODE

    @property
    def saved(self) -> bool:
        return self.code is not None

    def save(self, config: CodeTaskConfig) -> None:
        """Validate everything, then store it; on any error nothing changes."""
        if config.serialized_code:
            code = decode_code(config.serialized_code)
        elif config.code_str:
            # Source alone: parsed here, compiled only where the task runs (executor.source).
            code = source_payload(config.code_str, find_function(config.code_str, self.task_name))
        else:
            raise LatticeInputError("code_ser (or serialized_code) or code_str is required")
        inputs = parse_task_input(config.task_input)
        outputs = parse_task_output(config.task_output)
        requirements = TaskResourceRequirements.from_dict(config.resources)
        batch = BatchConfig.parse(config.batch_config)
        prio = None if config.priority is None else parse_priority(config.priority)
        # All valid: commit.
        self.config = config
        self.inputs, self.outputs, self.requirements = inputs, outputs, requirements
        self.code, self.code_id, self.batch = code, code_digest(code), batch
        self.priority, self.sandbox = prio, config.sandbox

    def references(self) -> list[InputParam]:
        return [p for p in self.inputs if p.schema is InputSchema.FROM_TASK]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "task_type": self.task_type.value,
            "task_input": self.config.task_input if self.config else None,
            "task_output": self.config.task_output if self.config else None,
            "code_str": self.config.code_str if self.config else None,
            "resources": self.requirements.to_dict(),
            "batch_config": self.batch.to_dict() if self.batch else None,
            "priority": self.priority,
            "saved": self.saved,
        }


@dataclass
class LangGraphTask(BaseTask):
    serialized_code: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    serialized_args: str | None = None
    serialized_kwargs: str | None = None
    code: bytes = b""
    code_id: str = ""
    requirements: TaskResourceRequirements = field(default_factory=TaskResourceRequirements)
    priority: int = DEFAULT_PRIORITY

    @classmethod
    def create(
        cls,
        workflow_id: str,
        task_id: str,
        task_name: str,
        serialized_code: str,
        resources: dict[str, Any] | None,
        priority: int = DEFAULT_PRIORITY,
    ) -> LangGraphTask:
        code = decode_code(serialized_code)
        requirements = TaskResourceRequirements.from_dict(resources)
        return cls(
            workflow_id,
            task_id,
            task_name,
            serialized_code=serialized_code,
            resources=dict(resources or {}),
            code=code,
            code_id=code_digest(code),
            requirements=requirements,
            priority=priority,
        )

    @property
    def task_type(self) -> TaskType:
        return TaskType.LANGGRAPH

    def set_args(self, args: str) -> None:
        self.serialized_args = args

    def set_kwargs(self, kwargs: str) -> None:
        self.serialized_kwargs = kwargs

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "task_type": self.task_type.value,
            "resources": self.requirements.to_dict(),
        }


@dataclass(frozen=True)
class CodeTaskDraft:
    """One code task of a batch (:meth:`Workflow.add_code_tasks`)."""

    task_id: str
    task_name: str
    config: CodeTaskConfig


#: how the reference implementation's client prefixes an output key in ``from_task`` values
REFERENCE_CLIENT_PREFIX = "output."


def _code_size(task: BaseTask) -> int:
    """Characters of code ``task`` stores: serialized code and source."""
    if isinstance(task, LangGraphTask):
        return len(task.serialized_code)
    if isinstance(task, CodeTask) and task.config is not None:
        return len(task.config.serialized_code or "") + len(task.config.code_str or "")
    return 0


class Workflow:
    """A DAG of tasks. Not thread-safe: the orchestrator owns it on one thread."""

    def __init__(self, workflow_id: str, *, max_code_bytes: int | None = None) -> None:
        self.workflow_id = workflow_id
        #: the most code (serialized and source, all tasks together) the workflow may hold
        self.max_code_bytes = max_code_bytes
        self._tasks: dict[str, BaseTask] = {}
        self._graph: nx.DiGraph = nx.DiGraph()
        #: code each task holds (see _code_size), and their sum: a limit check costs O(1)
        self._code_sizes: dict[str, int] = {}
        self._code_total = 0

    # --- building ---------------------------------------------------------------------------

    def add_task(self, task_id: str, task: BaseTask) -> None:
        if task_id in self._tasks:
            raise LatticeInputError(f"task {task_id} already exists in workflow {self.workflow_id}")
        self._check_code_size(task_id, task)
        self._put(task_id, task)
        self._graph.add_node(task_id)

    def _put(self, task_id: str, task: BaseTask) -> None:
        """Hold ``task`` as ``task_id`` (new or replacing), keeping the code total."""
        size = _code_size(task)
        self._code_total += size - self._code_sizes.get(task_id, 0)
        self._code_sizes[task_id] = size
        self._tasks[task_id] = task

    def _drop(self, task_id: str) -> None:
        self._graph.remove_node(task_id)
        del self._tasks[task_id]
        self._code_total -= self._code_sizes.pop(task_id, 0)

    def get_task(self, task_id: str) -> BaseTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFoundError(task_id, self.workflow_id) from None

    def get_code_task(self, task_id: str) -> CodeTask:
        task = self.get_task(task_id)
        if not isinstance(task, CodeTask):
            raise LatticeInputError(
                f"task {task_id} is a {task.task_type.value} task, not a code task"
            )
        return task

    def tasks(self) -> list[BaseTask]:
        return list(self._tasks.values())

    def code_tasks(self) -> list[CodeTask]:
        return [t for t in self._tasks.values() if isinstance(t, CodeTask)]

    def add_edge(self, source_task_id: str, target_task_id: str) -> None:
        """Add a dependency; an edge that closes a cycle is rolled back and raises CycleError."""
        self.get_task(source_task_id)
        self.get_task(target_task_id)
        if source_task_id == target_task_id:
            raise CycleError([source_task_id, target_task_id])
        if self._graph.has_edge(source_task_id, target_task_id):
            return
        self._graph.add_edge(source_task_id, target_task_id)
        # A new edge s->t closes a cycle iff t already reaches s.
        if nx.has_path(self._graph, target_task_id, source_task_id):
            path = nx.shortest_path(self._graph, target_task_id, source_task_id)
            self._graph.remove_edge(source_task_id, target_task_id)
            raise CycleError([source_task_id, *path])

    def del_edge(self, source_task_id: str, target_task_id: str) -> None:
        if not self._graph.has_edge(source_task_id, target_task_id):
            raise LatticeInputError(
                f"no edge {source_task_id} -> {target_task_id} in workflow {self.workflow_id}"
            )
        for param in self._references_between(source_task_id, target_task_id):
            raise LatticeInputError(
                f"edge {source_task_id} -> {target_task_id} carries input {param.key!r} "
                f"of task {target_task_id}; change that input first"
            )
        self._graph.remove_edge(source_task_id, target_task_id)

    def del_task(self, task_id: str) -> None:
        """Remove a task with its edges; refused while another task reads its outputs."""
        self.get_task(task_id)
        for succ in self._graph.successors(task_id):
            for param in self._references_between(task_id, succ):
                raise LatticeInputError(
                    f"task {succ} reads {param.ref} through input {param.key!r}; "
                    f"change or delete {succ} first"
                )
        self._drop(task_id)

    def add_code_tasks(
        self, drafts: Sequence[CodeTaskDraft], edges: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Add and save several code tasks, with the edges their ``from_task`` inputs imply,
        then add ``edges``: all of it or, on any error, none of it.

        A draft's inputs may refer to tasks already in the workflow and to drafts of the same
        batch (in any order); ``edges`` may join any of them.
        """
        added: list[str] = []
        explicit: list[tuple[str, str]] = []
        try:
            for draft in drafts:
                self.add_task(
                    draft.task_id, CodeTask(self.workflow_id, draft.task_id, draft.task_name)
                )
                added.append(draft.task_id)
            for draft in drafts:
                self.save_task(draft.task_id, draft.config, add_edges=True)
            for source, target in edges:
                if not self._graph.has_edge(source, target):
                    self.add_edge(source, target)
                    explicit.append((source, target))
        except BaseException:
            # Removing the new tasks removes every edge that touches them, too.
            self._graph.remove_edges_from(explicit)
            for task_id in added:
                self._drop(task_id)
            raise

    def _resolve_reference_form(self, param: InputParam) -> InputParam:
        """``{task_id}.output.{key}`` (what the reference client writes) means output ``key``,
        unless the source task declares an output literally named ``output.{key}`` (then it
        is spec/001 §5.2's ``{task_id}.{output_key}``). A source not saved yet is taken to
        declare no such output."""
        ref = param.ref
        prefix = REFERENCE_CLIENT_PREFIX
        if ref is None or not ref.output_key.startswith(prefix) or ref.output_key == prefix:
            return param
        src = self._tasks.get(ref.task_id)
        if isinstance(src, CodeTask) and src.saved and ref.output_key in src.outputs:
            return param
        key = ref.output_key.removeprefix(prefix)
        return dataclasses.replace(param, ref=TaskRef(ref.task_id, key))

    def _check_code_size(self, task_id: str, task: BaseTask) -> None:
        """Refuse ``task`` (replacing ``task_id``, if there is one) when the workflow's code
        would exceed :attr:`max_code_bytes`: stored code is kept as long as the workflow."""
        if self.max_code_bytes is None:
            return
        total = self._code_total - self._code_sizes.get(task_id, 0) + _code_size(task)
        if total > self.max_code_bytes:
            raise TooLargeError(
                f"workflow {self.workflow_id} would hold {total} bytes of code, over its limit "
                f"of {self.max_code_bytes} (the server's --max-workflow-code-mb)"
            )

    def _references_between(self, source: str, target: str) -> list[InputParam]:
        task = self._tasks.get(target)
        if not isinstance(task, CodeTask):
            return []
        return [p for p in task.references() if p.ref is not None and p.ref.task_id == source]

    def save_task(
        self,
        task_id: str,
        config: CodeTaskConfig,
        *,
        add_edges: bool,
        task_name: str | None = None,
    ) -> None:
        """Save a code task's configuration; with ``add_edges``, also wire its ``from_task``
        inputs. Validates references and cycles first: on any error nothing changes."""
        task = self.get_code_task(task_id)
        trial = copy.copy(task)
        if task_name:
            trial.task_name = task_name  # before save: a source-only task is found by its name
        trial.save(config)
        trial.inputs = tuple(self._resolve_reference_form(p) for p in trial.inputs)
        self._check_code_size(task_id, trial)
        sources: list[str] = []
        for param in trial.references():
            assert param.ref is not None
            src_id = param.ref.task_id
            src = self._tasks.get(src_id)
            if src is None:
                raise InvalidReferenceError(
                    f"input {param.key!r} of task {task_id} refers to task {src_id}, "
                    f"which is not in workflow {self.workflow_id}"
                )
            if src_id == task_id:
                raise CycleError([task_id, task_id])
            if isinstance(src, CodeTask) and src.saved and param.ref.output_key not in src.outputs:
                raise InvalidReferenceError(
                    f"input {param.key!r} of task {task_id} refers to output "
                    f"{param.ref.output_key!r} of task {src_id}, which declares {list(src.outputs)}"
                )
            sources.append(src_id)
        added: list[tuple[str, str]] = []
        if add_edges:
            try:
                for src_id in dict.fromkeys(sources):
                    if not self._graph.has_edge(src_id, task_id):
                        self.add_edge(src_id, task_id)
                        added.append((src_id, task_id))
            except CycleError:
                self._graph.remove_edges_from(added)
                raise
        else:
            missing = [s for s in sources if not self._graph.has_edge(s, task_id)]
            if missing:
                raise InvalidReferenceError(
                    f"task {task_id} reads outputs of {missing} without an edge from them; "
                    "use save_task_and_add_edge or add the edges first"
                )
        self._put(task_id, trial)
        if task_name:
            trial.task_name = task_name

    # --- reading ----------------------------------------------------------------------------

    def get_start_tasks(self) -> list[BaseTask]:
        return [self._tasks[t] for t, deg in self._graph.in_degree() if deg == 0]

    def get_ready_tasks_after_completion(self, completed: set[str]) -> list[BaseTask]:
        """The tasks not in ``completed`` whose upstream tasks all are, in workflow order: what
        may run once ``completed`` have finished (with nothing completed, the start tasks).
        A pure query of the DAG; the run's state says what has completed."""
        if not completed:
            return self.get_start_tasks()
        graph = self._graph
        return [
            task
            for tid, task in self._tasks.items()
            if tid not in completed and all(p in completed for p in graph.predecessors(tid))
        ]

    def descendants(self, task_id: str) -> set[str]:
        return set(nx.descendants(self._graph, task_id))

    def predecessors(self, task_id: str) -> list[str]:
        return list(self._graph.predecessors(task_id))

    def get_graph_edges(self) -> list[tuple[str, str]]:
        return list(self._graph.edges())

    def __len__(self) -> int:
        return len(self._tasks)

    def copy_for_run(self) -> Workflow:
        """A copy for one run: later edits of the definition do not reach a running run. Tasks
        are copied shallowly: their saved configuration is replaced, never mutated, by later
        saves."""
        run = Workflow(self.workflow_id)
        run._graph = self._graph.copy()
        run._tasks = {tid: copy.copy(t) for tid, t in self._tasks.items()}
        return run

"""Drive a SchedulerCore by hand: no thread, no executor, no clock.

:class:`Driver` plays the scheduler thread's part: it hands messages to the core, answers
each ``Submit`` with ``SUBMITTED`` (or a refusal, when asked), keeps what the executor would
be running, and records every event, cancel and node release the core decides. Tests then
finish, fail or lose submissions as an executor would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lattice.core.resource.manager import ResourceManager
from lattice.core.resource.node import NodeResources
from lattice.core.run.events import RunEvent, RunFinished
from lattice.core.run.state import RunState
from lattice.core.runtime.task import CodeTaskRuntime
from lattice.core.scheduler.commands import Cancel, Command, Emit, ReleaseNode, Stop, Submit
from lattice.core.scheduler.core import SchedulerCore
from lattice.core.scheduler.messages import (
    Message,
    MessageType,
    NodesObservedData,
    RunControlData,
    RunTaskData,
    RunTasksData,
    SubmitRefusedData,
    SubmittedData,
    TaskDoneData,
)
from lattice.core.workflow.inputs import TaskRef
from lattice.exceptions import TaskErrorInfo
from lattice.executor.base import TaskOutcome, TaskSubmission
from lattice.vocabulary import BatchConfig, TaskResourceRequirements

GiB = 1024**3


def task(
    task_id: str,
    run_id: str = "r1",
    *,
    cpu: float = 1.0,
    reads: Iterable[str] = (),
    batch: BatchConfig | None = None,
    priority: int = 2,
    name: str | None = None,
) -> CodeTaskRuntime:
    """A task that reads output ``out`` of each task in ``reads`` (tasks batch together when
    they share a ``name``)."""
    return CodeTaskRuntime(
        run_id=run_id,
        workflow_id="wf",
        task_id=task_id,
        task_name=name or f"name-{task_id}",
        code=b"code",
        code_id="cid",
        requirements=TaskResourceRequirements(cpu=cpu),
        priority=priority,
        outputs=("out",),
        upstream=tuple((f"in_{up}", TaskRef(up, "out")) for up in reads),
        batch=batch,
    )


@dataclass
class Driver:
    cpus: float = 2.0
    pipelines: bool = False
    max_attempts: int = 3
    now: float = 0.0
    refuse: set[str] = field(default_factory=set)
    events: list[RunEvent] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    stopped: bool = False
    #: what the executor holds: key -> submission
    running: dict[str, TaskSubmission] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rm = ResourceManager()
        self.rm.initialize_local(NodeResources(cpu_count=self.cpus, memory_bytes=GiB))
        self.node_id = self.rm.nodes()[0].node_id
        self.core = SchedulerCore(self.rm, max_attempts=self.max_attempts, pipelines=self.pipelines)

    # --- what the thread does ---------------------------------------------------------------

    def send(self, message_type: MessageType, data: Any = None) -> None:
        message = Message(message_type) if data is None else Message(message_type, data)
        self._perform(self.core.handle(message, self.now))
        self._perform(self.core.dispatch(self.now))

    def tick(self) -> None:
        """A wake-up with no message: due batches and queued tasks are dispatched."""
        self._perform(self.core.dispatch(self.now))

    def _perform(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Submit):
                key = command.key
                if key in self.refuse:
                    error = TaskErrorInfo.framework("RuntimeError", "refused")
                    answer = Message(MessageType.SUBMIT_REFUSED, SubmitRefusedData(key, error))
                else:
                    self.running[key] = command.submission
                    answer = Message(MessageType.SUBMITTED, SubmittedData(key))
                self._perform(self.core.handle(answer, self.now))
            elif isinstance(command, Emit):
                self.events.append(command.event)
            elif isinstance(command, Cancel):
                self.cancels.append(command.key)
            elif isinstance(command, ReleaseNode):
                self.released.append(command.node_id)
            elif isinstance(command, Stop):
                self.stopped = True

    # --- what the orchestrator and the executor say -----------------------------------------

    def run(
        self,
        run_id: str,
        tasks: list[CodeTaskRuntime],
        after: dict[str, set[str]],
        history: tuple[RunEvent, ...] = (),
    ) -> None:
        entries = tuple(RunTaskData(t, frozenset(after.get(t.task_id, ()))) for t in tasks)
        self.send(MessageType.RUN_TASKS, RunTasksData(entries, run_id, "wf", history))

    def cancel(self, run_id: str) -> None:
        self.send(MessageType.STOP_WORKFLOW, RunControlData(run_id))

    def key_of(self, task_id: str) -> str:
        matches = [k for k, s in self.running.items() if s.task_name == f"name-{task_id}"]
        assert matches, f"{task_id} is not running; running: {sorted(self.running)}"
        return matches[-1]

    def finish(self, task_id: str, value: Any = None) -> None:
        key = self.key_of(task_id)
        outputs = {"out": value if value is not None else task_id}
        self.done(key, TaskOutcome(value=outputs, duration=0.5), outputs)

    def fail(self, task_id: str, message: str = "boom") -> None:
        error = TaskErrorInfo("ValueError", message, "Traceback ...")
        self.done(self.key_of(task_id), TaskOutcome(error=error))

    def lose(self, task_id: str) -> None:
        error = TaskErrorInfo.framework("WorkerLostError", "the node died")
        self.done(self.key_of(task_id), TaskOutcome(error=error, lost=True))

    def done(self, key: str, outcome: TaskOutcome, encoded: Any = None) -> None:
        self.running.pop(key, None)
        self.send(MessageType.TASK_DONE, TaskDoneData(key, outcome, encoded))

    def observe(self, alive: set[str]) -> None:
        self.send(MessageType.NODES_OBSERVED, NodesObservedData(frozenset(alive)))

    # --- reading ----------------------------------------------------------------------------

    def kinds(self, run_id: str = "r1") -> list[tuple[str, str]]:
        """(event kind, task id or run status) of every event of ``run_id``, in order."""
        out = []
        for e in self.events:
            if e.run_id == run_id:
                label = e.status.value if isinstance(e, RunFinished) else e.task_id
                out.append((e.kind, label))
        return out

    def of(self, run_id: str, cls: type[RunEvent]) -> list[Any]:
        return [e for e in self.events if e.run_id == run_id and isinstance(e, cls)]

    def finished(self, run_id: str = "r1") -> RunFinished:
        ends = self.of(run_id, RunFinished)
        assert len(ends) == 1, f"run {run_id} finished {len(ends)} times: {self.kinds(run_id)}"
        return ends[0]

    def replay(self, run_id: str, tasks: list[CodeTaskRuntime]) -> RunState:
        mine = [e for e in self.events if e.run_id == run_id]
        return RunState.replay(run_id, "wf", [(t.task_id, t.task_name) for t in tasks], mine)

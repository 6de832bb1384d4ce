"""``create_app`` takes its parts: an event store and an executor of the caller's own."""

from __future__ import annotations

from lattice import LatticeClient, task
from lattice.config.settings import ServerSettings
from lattice.core.run.log import InMemoryEventStore
from lattice.executor.base import TaskHandle, TaskSubmission
from lattice.executor.local_executor import LocalExecutor
from tests.integration.server_fixture import InProcessServer
from tests.integration.submissions import make_submission, run


@task(inputs=["x"], outputs=["y"], resources={"cpu": 0.1})
def triple(params: dict[str, int]) -> dict[str, int]:
    return {"y": params["x"] * 3}


def answer(params: dict[str, int]) -> dict[str, int]:
    return {"out": 42}


class CountingExecutor(LocalExecutor):
    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[str] = []

    def submit(self, submission: TaskSubmission) -> TaskHandle:
        self.submitted.append(submission.task_name)
        return super().submit(submission)


def test_the_app_uses_the_store_and_executor_it_is_given_and_leaves_the_executor_running() -> None:
    store = InMemoryEventStore(max_finished=5)
    executor = CountingExecutor()
    settings = ServerSettings(executor="local")
    try:
        with (
            InProcessServer(settings, store=store, executor=executor) as server,
            LatticeClient(server.url) as client,
        ):
            wf = client.create_workflow()
            t = wf.add_task(triple, inputs={"x": 14})
            run_id = wf.run()
            assert wf.get_outputs(run_id)[t]["y"] == 42

        assert store.run_ids() == [run_id]
        assert store.get(run_id).closed
        assert executor.submitted == ["triple"]
        # The app did not shut down what it did not create: the executor still runs tasks.
        assert run(executor, make_submission(answer)).value == {"out": 42}
    finally:
        executor.shutdown()

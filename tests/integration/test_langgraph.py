"""LangGraphClient with a real LangGraph against a real Lattice head (Ray executor), no mocks.

The head runs as a child process for the whole module (Ray takes seconds to start). Nodes
are defined inside the tests, so cloudpickle ships them (and this module's classes) by value.
Nothing sleeps to wait: parallelism is proven with a socket rendezvous that every branch must
reach before any may finish, so branches that ran one after another would time out.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import operator
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pytest

from lattice import InvalidResourceError, LangGraphClient, TaskFailedError
from lattice.exceptions import LatticeInputError, LatticeUsageError
from tests.integration.server_fixture import HeadProcess, free_port

if importlib.util.find_spec("langgraph") is None and not os.environ.get("CI"):
    # In CI the imports below fail instead: a missing LangGraph must not pass silently there.
    pytest.skip(
        "the LangGraph tests need langgraph: pip install 'lattice[langgraph]'",
        allow_module_level=True,
    )

import numpy as np
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import MemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, RetryPolicy, Send, StreamWriter, interrupt

pytestmark = pytest.mark.ray

WAIT = 60.0  # upper bound of any wait; reached only when something is broken


@pytest.fixture(scope="module")
def head_url() -> Iterator[str]:
    """A ``lattice start --head --executor ray`` child on a free loopback port."""
    port = free_port()
    args = ["start", "--head", "--executor", "ray", "--port", str(port)]
    args += ["--ray-port", str(free_port()), "--num-cpus", "4", "--no-metrics"]
    server = HeadProcess(args)
    server.start(timeout=120)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(head_url: str) -> Iterator[LangGraphClient]:
    with LangGraphClient(head_url) as lg:
        yield lg


# --- helpers ----------------------------------------------------------------------------------


class Rendezvous:
    """``count`` remote nodes connect to this socket and block until all have arrived.

    :meth:`release` accepts the connections (failing if they do not all arrive within
    ``WAIT``) and then lets every node go. Nodes that ran one after another never all arrive.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(WAIT)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._conns: list[socket.socket] = []

    def release(self) -> None:
        try:
            while len(self._conns) < self.count:
                conn, _ = self._server.accept()
                self._conns.append(conn)
            for conn in self._conns:
                conn.sendall(b"g")
        finally:
            self.close()

    async def arelease(self) -> None:
        loop = asyncio.get_running_loop()
        self._server.setblocking(False)
        try:
            while len(self._conns) < self.count:
                conn, _ = await asyncio.wait_for(loop.sock_accept(self._server), WAIT)
                self._conns.append(conn)
            for conn in self._conns:
                await loop.sock_sendall(conn, b"g")
        finally:
            self.close()

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._server.close()


def meet(address: tuple[str, int]) -> None:
    """Runs in the worker: block until the test releases every node of the rendezvous."""
    with socket.create_connection(address, timeout=WAIT) as conn:
        if conn.recv(1) != b"g":
            raise RuntimeError("the rendezvous closed before every branch arrived")


def run_with_rendezvous(rendezvous: Rendezvous, fn: Any, *args: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn, *args)
        rendezvous.release()
        return future.result(timeout=WAIT)


@dataclass
class Point:
    x: float
    y: float
    tags: list[str] = field(default_factory=list)


class FlakyError(Exception):
    """Raised by a node until its third attempt."""


# --- fan-out / fan-in -------------------------------------------------------------------------


class FanState(TypedDict, total=False):
    address: tuple[str, int]
    runs: Annotated[list[dict[str, Any]], operator.add]
    total: int


def test_fan_out_fan_in_runs_branches_in_separate_processes_at_once(
    client: LangGraphClient,
) -> None:
    branches = ["b0", "b1", "b2", "b3"]

    def make_branch(name: str) -> Any:
        @client.task(name=name, cpu=1)
        def branch(state: FanState) -> dict[str, Any]:
            start = time.time()
            meet(state["address"])
            return {
                "runs": [{"name": name, "pid": os.getpid(), "start": start, "end": time.time()}]
            }

        return branch

    @client.task
    def join(state: FanState) -> dict[str, Any]:
        return {"total": len(state["runs"])}

    graph = StateGraph(FanState)
    graph.add_node("join", join)
    for name in branches:
        graph.add_node(name, make_branch(name))
        graph.add_edge(START, name)
    graph.add_edge(branches, "join")
    graph.add_edge("join", END)
    app = graph.compile()

    rendezvous = Rendezvous(len(branches))
    out = run_with_rendezvous(rendezvous, app.invoke, {"address": rendezvous.address})

    runs = out["runs"]
    assert out["total"] == len(branches)
    assert sorted(r["name"] for r in runs) == branches
    pids = {r["pid"] for r in runs}
    assert len(pids) == len(branches), f"branches shared processes: {runs}"
    assert os.getpid() not in pids
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs), "intervals overlap"


# --- conditional edges, Command, Send, subgraph ----------------------------------------------


class RouteState(TypedDict, total=False):
    value: int
    path: Annotated[list[str], operator.add]


def test_conditional_edges_and_command_routing(client: LangGraphClient) -> None:
    @client.task
    def classify(state: RouteState) -> dict[str, Any]:
        return {"path": ["classify"]}

    @client.task
    def route(state: RouteState) -> Literal["small", "big"]:
        return "big" if state["value"] >= 10 else "small"

    @client.task
    def small(state: RouteState) -> Command[Literal["finish"]]:
        return Command(goto="finish", update={"path": ["small"]})

    @client.task
    def big(state: RouteState) -> dict[str, Any]:
        return {"path": ["big"]}

    def finish(state: RouteState) -> dict[str, Any]:
        return {"path": ["finish"]}

    graph = StateGraph(RouteState)
    for name, fn in (("classify", classify), ("small", small), ("big", big), ("finish", finish)):
        graph.add_node(name, fn)
    graph.add_edge(START, "classify")
    graph.add_conditional_edges("classify", route)
    graph.add_edge("big", END)
    graph.add_edge("finish", END)
    app = graph.compile()

    assert app.invoke({"value": 3})["path"] == ["classify", "small", "finish"]
    assert app.invoke({"value": 42})["path"] == ["classify", "big"]


class MapState(TypedDict, total=False):
    numbers: list[int]
    squares: Annotated[list[tuple[int, int]], operator.add]
    total: int


class ItemState(TypedDict):
    n: int


def test_send_map_reduce(client: LangGraphClient) -> None:
    @client.task
    def square(state: ItemState) -> dict[str, Any]:
        return {"squares": [(state["n"], state["n"] ** 2)]}

    @client.task
    def reduce(state: MapState) -> dict[str, Any]:
        return {"total": sum(sq for _, sq in state["squares"])}

    def fan_out(state: MapState) -> list[Send]:
        return [Send("square", {"n": n}) for n in state["numbers"]]

    graph = StateGraph(MapState)
    graph.add_node("square", square)
    graph.add_node("reduce", reduce)
    graph.add_conditional_edges(START, fan_out, ["square"])
    graph.add_edge("square", "reduce")
    graph.add_edge("reduce", END)
    out = graph.compile().invoke({"numbers": list(range(1, 9))})

    assert sorted(out["squares"]) == [(n, n * n) for n in range(1, 9)]
    assert out["total"] == sum(n * n for n in range(1, 9))


class SubState(TypedDict, total=False):
    text: str
    words: list[str]
    log: Annotated[list[str], operator.add]


def test_subgraph_with_decorated_nodes(client: LangGraphClient) -> None:
    @client.task
    def split(state: SubState) -> dict[str, Any]:
        return {"words": state["text"].split(), "log": [f"split@{os.getpid()}"]}

    @client.task
    def upper(state: SubState) -> dict[str, Any]:
        return {"words": [w.upper() for w in state["words"]], "log": ["upper"]}

    sub = StateGraph(SubState)
    sub.add_node("split", split)
    sub.add_node("upper", upper)
    sub.add_edge(START, "split")
    sub.add_edge("split", "upper")
    sub.add_edge("upper", END)

    @client.task
    def prepare(state: SubState) -> dict[str, Any]:
        return {"text": state["text"].strip(), "log": ["prepare"]}

    parent = StateGraph(SubState)
    parent.add_node("prepare", prepare)
    parent.add_node("sub", sub.compile())
    parent.add_edge(START, "prepare")
    parent.add_edge("prepare", "sub")
    parent.add_edge("sub", END)
    out = parent.compile().invoke({"text": "  lattice runs nodes  "})

    assert out["words"] == ["LATTICE", "RUNS", "NODES"]
    assert out["log"][0] == "prepare" and out["log"][-1] == "upper"
    assert out["log"][1] != f"split@{os.getpid()}"


# --- checkpointer and interrupts ----------------------------------------------------------------


class ReviewState(TypedDict, total=False):
    draft: str
    decision: str
    final: str
    calls: Annotated[list[str], operator.add]


def test_interrupt_and_resume_around_decorated_nodes(client: LangGraphClient) -> None:
    @client.task
    def write(state: ReviewState) -> dict[str, Any]:
        return {"draft": state["draft"] + " v1", "calls": ["write"]}

    def review(state: ReviewState) -> dict[str, Any]:
        decision = interrupt({"draft": state["draft"]})
        return {"decision": decision, "calls": ["review"]}

    @client.task
    def publish(state: ReviewState) -> dict[str, Any]:
        return {"final": f"{state['draft']} [{state['decision']}]", "calls": ["publish"]}

    graph = StateGraph(ReviewState)
    graph.add_node("write", write)
    graph.add_node("review", review)
    graph.add_node("publish", publish)
    graph.add_edge(START, "write")
    graph.add_edge("write", "review")
    graph.add_edge("review", "publish")
    graph.add_edge("publish", END)
    app = graph.compile(checkpointer=MemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "review-1"}}

    paused = app.invoke({"draft": "essay"}, config)
    assert paused["__interrupt__"][0].value == {"draft": "essay v1"}
    assert app.get_state(config).next == ("review",)

    done = app.invoke(Command(resume="approved"), config)
    assert done["final"] == "essay v1 [approved]"
    assert done["calls"] == ["write", "review", "publish"]  # write did not run again


def test_interrupt_inside_a_decorated_node(client: LangGraphClient) -> None:
    class AskState(TypedDict, total=False):
        answers: list[str]
        pid: int

    @client.task
    def ask_twice(state: AskState) -> dict[str, Any]:
        first = interrupt("first?")
        second = interrupt(f"second after {first}?")
        return {"answers": [first, second], "pid": os.getpid()}

    graph = StateGraph(AskState)
    graph.add_node("ask_twice", ask_twice)
    graph.add_edge(START, "ask_twice")
    graph.add_edge("ask_twice", END)
    app = graph.compile(checkpointer=MemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "ask-1"}}

    assert app.invoke({}, config)["__interrupt__"][0].value == "first?"
    assert app.invoke(Command(resume="A"), config)["__interrupt__"][0].value == "second after A?"
    done = app.invoke(Command(resume="B"), config)
    assert done["answers"] == ["A", "B"]
    assert done["pid"] != os.getpid()


# --- concurrency ---------------------------------------------------------------------------------


class CountState(TypedDict, total=False):
    n: int
    parts: Annotated[list[int], operator.add]
    result: int


def test_graphs_invoked_concurrently_from_threads(client: LangGraphClient) -> None:
    @client.task
    def double(state: CountState) -> dict[str, Any]:
        return {"parts": [state["n"] * 2]}

    @client.task
    def triple(state: CountState) -> dict[str, Any]:
        return {"parts": [state["n"] * 3]}

    @client.task
    def add(state: CountState) -> dict[str, Any]:
        return {"result": sum(state["parts"]) + state["n"]}

    graph = StateGraph(CountState)
    for name, fn in (("double", double), ("triple", triple), ("add", add)):
        graph.add_node(name, fn)
    graph.add_edge(START, "double")
    graph.add_edge(START, "triple")
    graph.add_edge(["double", "triple"], "add")
    graph.add_edge("add", END)
    app = graph.compile()

    inputs = list(range(1, 9))
    with ThreadPoolExecutor(len(inputs)) as pool:
        outputs = list(pool.map(lambda n: app.invoke({"n": n}), inputs))
    assert [o["result"] for o in outputs] == [6 * n for n in inputs]
    assert [sorted(o["parts"]) for o in outputs] == [[2 * n, 3 * n] for n in inputs]


# --- values that JSON cannot hold ----------------------------------------------------------------


class RichState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    point: Point
    matrix: Any
    stamp: tuple[int, str]


def test_messages_dataclass_and_numpy_round_trip(client: LangGraphClient) -> None:
    @client.task
    def think(state: RichState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, HumanMessage)
        point = state["point"]
        return {
            "messages": [AIMessage(content=f"echo: {last.content}", name="bot")],
            "point": Point(point.x * 2, point.y + 1, [*point.tags, "moved"]),
            "matrix": state["matrix"] @ state["matrix"],
            "stamp": (len(state["messages"]), type(point).__name__),
        }

    graph = StateGraph(RichState)
    graph.add_node("think", think)
    graph.add_edge(START, "think")
    graph.add_edge("think", END)
    matrix = np.arange(9, dtype=np.float64).reshape(3, 3)
    out = graph.compile().invoke(
        {
            "messages": [HumanMessage(content="hello")],
            "point": Point(1.5, 2.0, ["a"]),
            "matrix": matrix,
        }
    )

    human, ai = out["messages"]
    assert isinstance(human, HumanMessage) and human.content == "hello"
    assert isinstance(ai, AIMessage) and ai.content == "echo: hello" and ai.name == "bot"
    assert type(out["point"]) is Point  # the very class of this module, not a copy
    assert out["point"] == Point(3.0, 3.0, ["a", "moved"])
    assert isinstance(out["matrix"], np.ndarray) and out["matrix"].dtype == np.float64
    np.testing.assert_array_equal(out["matrix"], matrix @ matrix)
    assert out["stamp"] == (1, "Point")


# --- config, writer, runtime ------------------------------------------------------------------


class ConfigState(TypedDict, total=False):
    seen: dict[str, Any]


def test_config_writer_and_runtime_reach_the_node(client: LangGraphClient) -> None:
    from langgraph.config import get_config, get_stream_writer
    from langgraph.runtime import Runtime

    @dataclass
    class Context:
        user: str

    @client.task
    def inspect_run(
        state: ConfigState, config: RunnableConfig, writer: StreamWriter, runtime: Runtime[Context]
    ) -> dict[str, Any]:
        writer({"progress": 0.5})
        get_stream_writer()({"progress": 1.0})
        conf = config["configurable"]
        return {
            "seen": {
                "thread_id": conf.get("thread_id"),
                "user_key": conf.get("user_key"),
                "tags": config.get("tags"),
                "context_user": runtime.context.user,
                "same_config": get_config()["configurable"]["thread_id"],
                "internals": sorted(k for k in conf if k.startswith("__pregel_")),
                "callbacks": config.get("callbacks"),
                "pid": os.getpid(),
            }
        }

    graph = StateGraph(ConfigState, context_schema=Context)
    graph.add_node("inspect_run", inspect_run)
    graph.add_edge(START, "inspect_run")
    graph.add_edge("inspect_run", END)
    app = graph.compile(checkpointer=MemorySaver())
    config: RunnableConfig = {
        "configurable": {"thread_id": "cfg-1", "user_key": "k"},
        "tags": ["t1"],
    }
    chunks = list(
        app.stream({}, config, context=Context(user="ada"), stream_mode=["custom", "values"])
    )

    custom = [c for mode, c in chunks if mode == "custom"]
    assert custom == [{"progress": 0.5}, {"progress": 1.0}]
    seen = [c for mode, c in chunks if mode == "values"][-1]["seen"]
    assert seen["thread_id"] == "cfg-1" and seen["same_config"] == "cfg-1"
    assert seen["user_key"] == "k"
    assert "t1" in seen["tags"]
    assert seen["context_user"] == "ada"
    assert seen["callbacks"] is None
    assert seen["pid"] != os.getpid()


# --- errors and retries ---------------------------------------------------------------------------


class ErrState(TypedDict, total=False):
    x: int
    ok: bool


def test_node_error_is_raised_with_its_type_and_remote_traceback(client: LangGraphClient) -> None:
    @client.task
    def explode(state: ErrState) -> dict[str, Any]:
        raise ValueError(f"bad input x={state['x']}")

    graph = StateGraph(ErrState)
    graph.add_node("explode", explode)
    graph.add_edge(START, "explode")
    graph.add_edge("explode", END)

    with pytest.raises(ValueError, match="bad input x=7") as caught:
        graph.compile().invoke({"x": 7})

    cause = caught.value.__cause__
    assert isinstance(cause, TaskFailedError)
    assert cause.error.type == "ValueError"
    assert "in explode" in cause.error.traceback
    assert "raise ValueError" in cause.error.traceback
    text = "".join(traceback.format_exception(caught.value))
    assert "Remote traceback" in text and "in explode" in text


class RetryState(TypedDict, total=False):
    path: str
    attempts: int


def _attempt(path: str) -> int:
    with open(path, "a+") as f:
        f.write("x")
        f.seek(0)
        return len(f.read())


def test_retry_policy_retries_the_remote_exception_type(
    client: LangGraphClient, tmp_path: Path
) -> None:
    @client.task
    def flaky(state: RetryState) -> dict[str, Any]:
        attempt = _attempt(state["path"])
        if attempt < 3:
            raise FlakyError(f"attempt {attempt} failed")
        return {"attempts": attempt}

    graph = StateGraph(RetryState)
    policy = RetryPolicy(max_attempts=3, retry_on=FlakyError, initial_interval=0.01, jitter=False)
    graph.add_node("flaky", flaky, retry_policy=policy)
    graph.add_edge(START, "flaky")
    graph.add_edge("flaky", END)

    out = graph.compile().invoke({"path": str(tmp_path / "attempts")})
    assert out["attempts"] == 3


def test_default_retry_policy_does_not_retry_value_error(
    client: LangGraphClient, tmp_path: Path
) -> None:
    @client.task
    def invalid(state: RetryState) -> dict[str, Any]:
        raise ValueError(f"attempt {_attempt(state['path'])}")

    graph = StateGraph(RetryState)
    graph.add_node(
        "invalid", invalid, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01)
    )
    graph.add_edge(START, "invalid")
    graph.add_edge("invalid", END)

    with pytest.raises(ValueError, match="attempt 1"):
        graph.compile().invoke({"path": str(tmp_path / "attempts")})
    assert (tmp_path / "attempts").read_text() == "x"


# --- async nodes -----------------------------------------------------------------------------------


def test_async_nodes_in_ainvoke_do_not_block_the_loop(client: LangGraphClient) -> None:
    @client.task
    async def fetch_a(state: FanState) -> dict[str, Any]:
        await asyncio.sleep(0)  # the coroutine runs in the worker's own loop
        meet(state["address"])
        return {"runs": [{"name": "a", "pid": os.getpid()}]}

    @client.task
    async def fetch_b(state: FanState) -> dict[str, Any]:
        meet(state["address"])
        return {"runs": [{"name": "b", "pid": os.getpid()}]}

    assert inspect.iscoroutinefunction(fetch_a)
    graph = StateGraph(FanState)
    graph.add_node("fetch_a", fetch_a)
    graph.add_node("fetch_b", fetch_b)
    graph.add_edge(START, "fetch_a")
    graph.add_edge(START, "fetch_b")
    graph.add_edge(["fetch_a", "fetch_b"], END)
    app = graph.compile()

    async def main() -> dict[str, Any]:
        rendezvous = Rendezvous(2)
        run = asyncio.ensure_future(app.ainvoke({"address": rendezvous.address}))
        # Accepting on this same loop while the nodes wait remotely: a node call that
        # blocked the loop would leave them waiting for a release that never comes.
        await rendezvous.arelease()
        return await asyncio.wait_for(run, WAIT)

    out = asyncio.run(main())
    assert sorted(r["name"] for r in out["runs"]) == ["a", "b"]
    assert os.getpid() not in {r["pid"] for r in out["runs"]}


# --- the decorator ----------------------------------------------------------------------------------


def test_decorator_forms_keep_the_signature(client: LangGraphClient) -> None:
    def node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return {"cpus": config["configurable"].get("n")}

    forms = [
        client.task(node),
        client.task()(node),
        client.task(resources={"cpu": 0.5, "cpu_mem": 64})(node),
        client.task(cpu=0.5, cpu_mem=64)(node),
        client.task(cpu=1, gpu=1, gpu_mem=1024)(node),
        client.task(resources={"gpu": 1}, gpu_mem=512)(node),
    ]
    for wrapped in forms:
        assert inspect.signature(wrapped) == inspect.signature(node)
        assert wrapped.__name__ == "node"
        assert not inspect.iscoroutinefunction(wrapped)


def test_resources_reach_the_executor(client: LangGraphClient) -> None:
    @client.task(cpu=2)
    def claim(state: dict[str, Any]) -> dict[str, Any]:
        import ray

        return {"assigned": ray.get_runtime_context().get_assigned_resources()}

    assert claim({})["assigned"].get("CPU") == 2.0


def test_invalid_resources_are_rejected_at_decoration(client: LangGraphClient) -> None:
    def node(state: dict[str, Any]) -> dict[str, Any]:
        return state

    with pytest.raises(ValueError, match="'cpus'"):
        client.task(resources={"cpus": 2})(node)
    with pytest.raises(InvalidResourceError, match="'tpu'"):
        client.task(resources={"cpu": 1, "tpu": 1})(node)
    with pytest.raises(InvalidResourceError, match="cpu"):
        client.task(cpu=-1)(node)
    with pytest.raises(InvalidResourceError, match="given twice"):
        client.task(resources={"cpu": 1}, cpu=2)(node)


def test_a_store_parameter_is_refused(client: LangGraphClient) -> None:
    from langgraph.store.base import BaseStore

    def uses_store(state: dict[str, Any], store: BaseStore) -> dict[str, Any]:
        return state

    with pytest.raises(LatticeUsageError, match="store"):
        client.task(uses_store)


def test_unpicklable_arguments_name_the_node(client: LangGraphClient) -> None:
    @client.task
    def holds_lock(state: dict[str, Any]) -> dict[str, Any]:
        return {}

    with pytest.raises(LatticeInputError, match="holds_lock"):
        holds_lock({"lock": threading.Lock()})


def test_a_registration_the_server_forgot_is_renewed(client: LangGraphClient) -> None:
    from lattice.client.langgraph.node import Registration

    @client.task
    def echo(state: dict[str, Any]) -> dict[str, Any]:
        return {"echo": state["v"]}

    assert echo({"v": 1}) == {"echo": 1}
    node = echo.__lattice_node__  # type: ignore[attr-defined]
    first = node.registration
    # As after a server restart: the workflow id the client holds answers 404.
    stale = Registration("no-such-workflow", first.task_id)
    node.registration = stale
    client._workflow_id = stale.workflow_id

    assert echo({"v": 2}) == {"echo": 2}
    assert node.registration.workflow_id not in (stale.workflow_id, first.workflow_id)


def test_unpicklable_runtime_context_is_left_out(client: LangGraphClient) -> None:
    from langgraph.runtime import Runtime

    @dataclass
    class Deps:
        lock: Any  # a live object of the graph's process

    @client.task
    def uses_runtime(state: ConfigState, runtime: Runtime[Deps]) -> dict[str, Any]:
        return {"seen": {"context": runtime.context, "pid": os.getpid()}}

    graph = StateGraph(ConfigState, context_schema=Deps)
    graph.add_node("uses_runtime", uses_runtime)
    graph.add_edge(START, "uses_runtime")
    graph.add_edge("uses_runtime", END)
    out = graph.compile().invoke({}, context=Deps(lock=threading.Lock()))
    assert out["seen"]["context"] is None
    assert out["seen"]["pid"] != os.getpid()

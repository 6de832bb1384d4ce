"""A research-agent-shaped LangGraph graph whose CPU-heavy analyses run in parallel on Lattice.

    plan -> analyse(sub-question 1..N)  (Send: one branch per sub-question) -> synthesize

``plan`` splits the question into sub-questions; each ``analyse`` branch does CPU-heavy work
in pure Python (it builds a corpus for its sub-question and mines it for key terms); and
``synthesize`` writes the answer. The graph is the same both times: natively, LangGraph runs
the branches in threads that the GIL serialises; with ``@client.task`` each branch runs in
its own worker process. The script runs both, prints both wall times and checks that the
answers are identical.

    python examples/langgraph_research_agent.py                          # own head
    python examples/langgraph_research_agent.py http://127.0.0.1:8000    # a running head
"""

from __future__ import annotations

import operator
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send

from lattice import LangGraphClient

WORDS = (
    "scheduler latency throughput gpu memory cache batch queue worker node graph state "
    "retry checkpoint token model prompt agent tool search index vector shard replica"
)
VOCABULARY = tuple(WORDS.split())
DOCUMENTS = 60
WORDS_PER_DOCUMENT = 6_000


class ResearchState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    sub_questions: list[str]
    findings: Annotated[list[dict[str, Any]], operator.add]


class Branch(TypedDict):
    sub_question: str


def plan(state: ResearchState) -> dict[str, Any]:
    question = str(state["messages"][-1].content)
    aspects = ["scheduling", "memory", "fault tolerance", "retrieval"]
    return {"sub_questions": [f"{question} -- {aspect}" for aspect in aspects]}


def fan_out(state: ResearchState) -> list[Send]:
    return [Send("analyse", {"sub_question": q}) for q in state["sub_questions"]]


def analyse(state: Branch) -> dict[str, Any]:
    """CPU-heavy, pure Python: synthesise a corpus for the sub-question, mine its bigrams."""
    question = state["sub_question"]
    seed = sum(map(ord, question))
    bigrams: Counter[tuple[str, str]] = Counter()
    for doc in range(DOCUMENTS):
        x = seed + doc
        previous = ""
        for _ in range(WORDS_PER_DOCUMENT):
            x = (x * 1103515245 + 12345) % 2147483648
            word = VOCABULARY[(x >> 8) % len(VOCABULARY)]
            if previous:
                bigrams[(previous, word)] += 1
            previous = word
    top = [f"{a} {b}" for (a, b), _ in bigrams.most_common(3)]
    return {"findings": [{"sub_question": question, "key_terms": top}]}


def synthesize(state: ResearchState) -> dict[str, Any]:
    lines = [
        f"- {f['sub_question'].split(' -- ')[-1]}: {', '.join(f['key_terms'])}"
        for f in sorted(state["findings"], key=lambda f: f["sub_question"])
    ]
    return {"messages": [AIMessage(content="Findings:\n" + "\n".join(lines))]}


def build(decorate: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """The graph; ``decorate`` wraps the node that does the heavy lifting."""
    graph = StateGraph(ResearchState)
    graph.add_node("plan", plan)
    graph.add_node("analyse", decorate(analyse))
    graph.add_node("synthesize", synthesize)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", fan_out, ["analyse"])
    graph.add_edge("analyse", "synthesize")
    graph.add_edge("synthesize", END)
    return graph.compile()


def timed_answer(app: Any, question: str) -> tuple[str, float]:
    start = time.perf_counter()
    out = app.invoke({"messages": [HumanMessage(content=question)]})
    return str(out["messages"][-1].content), time.perf_counter() - start


def run(server_url: str) -> int:
    question = "How should an agent runtime spread work over a cluster?"
    native_answer, native_s = timed_answer(build(lambda f: f), question)
    with LangGraphClient(server_url) as client:
        on_lattice = build(client.task(cpu=1))
        timed_answer(on_lattice, "warm-up")  # first calls start the worker processes
        lattice_answer, lattice_s = timed_answer(on_lattice, question)
    print(lattice_answer)
    print(f"\nnative LangGraph: {native_s:.2f}s   on Lattice: {lattice_s:.2f}s")
    if lattice_answer != native_answer:
        print("the answers differ!")
        return 1
    print("answers identical")
    return 0


def main(argv: list[str]) -> int:
    if argv:
        return run(argv[0])
    from lattice.utils.head import LocalHead

    print("starting a Ray head on a free port ...", flush=True)
    with LocalHead(executor="ray") as head:
        return run(head.url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

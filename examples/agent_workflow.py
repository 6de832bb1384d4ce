"""An agent-shaped workflow: analyze -> three independent tool calls -> synthesize.

The three tools run at the same time, so the run takes about analyze + slowest tool +
synthesize, not the sum. Prints the wall time against the sequential sum.

    python examples/agent_workflow.py --start-head          # starts and stops its own head
    python examples/agent_workflow.py http://127.0.0.1:8000 # uses a running head
"""

from __future__ import annotations

import sys
import time

from lattice import LatticeClient, task

TOOL_SECONDS = 1.0


@task(inputs=["question"], outputs=["topics"], resources={"cpu": 0.1})
def analyze(params: dict[str, str]) -> dict[str, list[str]]:
    time.sleep(0.2)  # stands in for an LLM call that plans the research
    words = params["question"].lower().rstrip("?").split()
    return {"topics": [w for w in words if len(w) > 4][:3]}


@task(inputs=["topics", "tool"], outputs=["finding"], resources={"cpu": 0.1})
def call_tool(params: dict[str, object]) -> dict[str, str]:
    time.sleep(TOOL_SECONDS)  # stands in for a web search / API call
    topics = params["topics"]
    assert isinstance(topics, list)
    return {"finding": f"{params['tool']} on {', '.join(topics)}"}


@task(inputs=["a", "b", "c"], outputs=["answer"], resources={"cpu": 0.1})
def synthesize(params: dict[str, str]) -> dict[str, str]:
    time.sleep(0.2)  # stands in for the LLM call that writes the answer
    return {"answer": " | ".join(params[k] for k in ("a", "b", "c"))}


def run(server_url: str) -> int:
    with LatticeClient(server_url) as client:
        wf = client.create_workflow()
        plan = wf.add_task(
            analyze, inputs={"question": "How do parallel agent runtimes schedule tools?"}
        )
        tools = [
            wf.add_task(
                call_tool,
                inputs={"topics": plan.outputs["topics"], "tool": name},
                task_name=f"tool_{name}",
            )
            for name in ("search", "calculator", "database")
        ]
        final = wf.add_task(
            synthesize, inputs=dict(zip("abc", (t.outputs["finding"] for t in tools), strict=True))
        )
        start = time.perf_counter()
        run_id = wf.run()
        wf.get_results(run_id, verbose=True, timeout=120)
        outputs = wf.get_outputs(run_id, timeout=120)
        wall = time.perf_counter() - start
    sequential = 0.2 + 3 * TOOL_SECONDS + 0.2
    print(f"\nanswer: {outputs[final]['answer']}")
    print(f"wall time {wall:.2f}s vs {sequential:.2f}s if the tools ran one after another")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--start-head":
        from lattice.utils.head import LocalHead

        executor = argv[1] if len(argv) > 1 else "ray"
        print(f"starting a {executor} head ...")
        with LocalHead(executor=executor) as head:
            return run(head.url)
    return run(argv[0] if argv else "http://127.0.0.1:8000")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
